/**
 * The API's wire types, by name, from the types generated out of the OpenAPI document
 * (`schema.ts`, made by `npm run generate`): what the server answers and takes, field for field.
 *
 * @module
 */

import type { components } from "./schema.js";

type S = components["schemas"];

/** A page of a list: pass `next_cursor` back as `cursor` for the next one (absent on the last). */
export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}

export type Agent = S["Agent"];
export type AgentVersion = S["AgentVersion"];
export type ArchiveResult = S["ArchiveResult"];
export type AuditRecord = S["AuditRecord"];
export type AuditVerification = S["AuditVerification"];
export type BuildImage = S["BuildImage"];
export type CreateFilesystem = S["CreateFilesystem"];
export type CreateKey = S["CreateKey"];
export type CreateNamespace = S["CreateNamespace"];
export type CreateProcess = S["CreateProcess"];
export type CreateSandbox = S["CreateSandbox"];
export type CreateTask = S["CreateTask"];
export type CreatedKey = S["CreatedKey"];
export type ErrorBody = S["ErrorBody"];
export type ExecEvent = S["ExecEvent"];
export type ExecRequest = S["ExecRequest"];
export type ExecResult = S["ExecResult"];
export type FileEntry = S["FileEntry"];
export type FilesystemInfo = S["Filesystem"];
export type Health = S["Health"];
export type Image = S["Image"];
export type Key = S["Key"];
export type Namespace = S["Namespace"];
export type ProcessInfo = S["Process"];
export type ProcessEvent = S["ProcessEvent"];
export type PullImage = S["PullImage"];
export type Quotas = S["Quotas"];
export type Role = S["Role"];
export type SandboxInfo = S["Sandbox"];
export type TaskInfo = S["Task"];
export type TaskEvent = S["TaskEvent"];
export type TaskMessage = S["TaskMessage"];
export type UpdateNamespace = S["UpdateNamespace"];
export type UsageReport = S["UsageReport"];
export type EventAccepted = S["EventAccepted"];
export type StdinResult = S["StdinResult"];
export type Policy = S["Policy"];
