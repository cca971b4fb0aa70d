-- Each namespace's incarnation: an id made when the namespace is created, never reused. A name
-- can be deleted and created again; everything the server keeps per namespace outside these
-- tables (metrics, exec logs) is keyed by the incarnation, so a new owner of a name never sees
-- what the old one left. Namespaces made before this migration keep their name as incarnation
-- (new incarnations carry a prefix no name can have), so their exec logs stay theirs.
ALTER TABLE namespaces ADD COLUMN incarnation TEXT COLLATE "C";
UPDATE namespaces SET incarnation = name WHERE incarnation IS NULL;
CREATE UNIQUE INDEX namespaces_by_incarnation ON namespaces (incarnation);
