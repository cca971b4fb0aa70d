#!/usr/bin/env python3
"""Wraps a root filesystem tar into an OCI image layout, written as one tar file.

    scripts/oci-layout.py ROOTFS_TAR OUT_TAR [--env K=V]... [--workdir DIR] [--user USER]
                          [--cmd ARG]... [--ref-name NAME] [--created-by TEXT]

The layout (OCI image spec v1.0: image-layout.md) holds `oci-layout`, `index.json` naming one
manifest (annotated `org.opencontainers.image.ref.name`), and under `blobs/sha256/` the manifest,
the config (`linux/amd64`, `rootfs.diff_ids` = the sha256 of ROOTFS_TAR as given) and one
`application/vnd.oci.image.layer.v1.tar+gzip` layer: ROOTFS_TAR gzipped with no name and no time
in its header. Every timestamp (the config's `created`, the outer tar's entries) comes from
SOURCE_DATE_EPOCH (default 0), so the same ROOTFS_TAR always gives the same bytes.

The output appears atomically (written beside OUT_TAR, then renamed). Standard library only.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

CHUNK = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gzip_layer(rootfs: str, out_path: str) -> tuple[str, str, int]:
    """Gzips `rootfs` into `out_path`; returns (diff_id, blob digest, blob size)."""
    diff = hashlib.sha256()
    with open(rootfs, "rb") as src, open(out_path, "wb") as raw:
        # mtime=0 and an empty file name keep the gzip header free of this build's details.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                diff.update(chunk)
                gz.write(chunk)
    blob = hashlib.sha256()
    size = 0
    with open(out_path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            blob.update(chunk)
            size += len(chunk)
    return "sha256:" + diff.hexdigest(), "sha256:" + blob.hexdigest(), size


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar: tarfile.TarFile, name: str, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = mtime
    tar.addfile(info)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rootfs")
    parser.add_argument("out")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--user", default="")
    parser.add_argument("--cmd", action="append", default=[])
    parser.add_argument("--ref-name", default="latest")
    parser.add_argument("--created-by", default="")
    args = parser.parse_args()

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out_dir = os.path.dirname(os.path.abspath(args.out))

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".oci-layout-") as work:
        layer_path = os.path.join(work, "layer.tar.gz")
        diff_id, layer_digest, layer_size = gzip_layer(args.rootfs, layer_path)

        run_config: dict = {"Env": args.env, "WorkingDir": args.workdir}
        if args.user:
            run_config["User"] = args.user
        if args.cmd:
            run_config["Cmd"] = args.cmd
        config = {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": args.created_by}],
        }
        config_bytes = json.dumps(config, indent=2, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config_bytes),
                "size": len(config_bytes),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest_of(manifest_bytes),
                    "size": len(manifest_bytes),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {"org.opencontainers.image.ref.name": args.ref_name},
                }
            ],
        }
        index_bytes = json.dumps(index, indent=2, sort_keys=True).encode()

        partial = os.path.join(work, "image.tar")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', epoch)
            add_bytes(tar, "index.json", index_bytes, epoch)
            add_dir(tar, "blobs", epoch)
            add_dir(tar, "blobs/sha256", epoch)
            blobs = [
                (config_bytes, digest_of(config_bytes)),
                (manifest_bytes, digest_of(manifest_bytes)),
            ]
            for data, digest in sorted(blobs, key=lambda b: b[1]):
                add_bytes(tar, "blobs/sha256/" + digest.split(":", 1)[1], data, epoch)
            info = tarfile.TarInfo("blobs/sha256/" + layer_digest.split(":", 1)[1])
            info.size = layer_size
            info.mode = 0o644
            info.mtime = epoch
            with open(layer_path, "rb") as f:
                tar.addfile(info, f)
        os.chmod(partial, 0o644)
        os.replace(partial, args.out)
    print(f"{args.out}: manifest {digest_of(manifest_bytes)}, layer {layer_digest} ({layer_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
