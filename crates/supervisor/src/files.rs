//! Files. Paths are resolved by the kernel inside the sandbox's own root: `..` and symlinks end
// at the sandbox's `/`, never outside.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use crate::protocol::{self, kind, Failure, FailureKind, CHUNK};

pub(crate) fn read_file(conn: &mut UnixStream, path: &str, max_bytes: u64) -> Result<u64, Failure> {
    if !path.starts_with('/') {
        return Err(Failure::new(FailureKind::InvalidRequest, "path must be absolute"));
    }
    let mut file = fs::File::open(path).map_err(|e| Failure::from_io(path, &e))?;
    let meta = file.metadata().map_err(|e| Failure::from_io(path, &e))?;
    if !meta.is_file() {
        return Err(Failure::new(FailureKind::NotAFile, format!("{path}: not a regular file")));
    }
    if meta.len() > max_bytes {
        return Err(Failure::new(
            FailureKind::TooLarge,
            format!("{path}: {} bytes is over the {max_bytes} byte limit", meta.len()),
        ));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Failure::from_io(path, &e))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > max_bytes {
            return Err(Failure::new(FailureKind::TooLarge, format!("{path}: grew past the {max_bytes} byte limit")));
        }
        protocol::write_frame(conn, kind::FILE_DATA, &buf[..n]).map_err(|e| Failure::from_io("connection", &e))?;
    }
}

pub(crate) fn write_file(conn: &mut UnixStream, path: &str, max_bytes: u64, mode: u32) -> Result<u64, Failure> {
    let target = Path::new(path);
    if !path.starts_with('/') || target.file_name().is_none() {
        return Err(Failure::new(FailureKind::InvalidRequest, "path must be an absolute file path"));
    }
    let dir = target.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| Failure::from_io(&dir.display().to_string(), &e))?;
    if target.is_dir() {
        return Err(Failure::new(FailureKind::NotAFile, format!("{path}: is a directory")));
    }
    let tmp = dir.join(format!(".bulkhead-upload-{}", std::process::id() ^ (Instant::now().elapsed().subsec_nanos())));
    let tmp_name = tmp.display().to_string();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Failure::from_io(path, &e))?;
    let result = (|| {
        let mut total = 0u64;
        loop {
            match protocol::read_frame(conn) {
                Ok(Some((kind::DATA, data))) => {
                    total += data.len() as u64;
                    if total > max_bytes {
                        return Err(Failure::new(
                            FailureKind::TooLarge,
                            format!("{path}: over the {max_bytes} byte limit"),
                        ));
                    }
                    file.write_all(&data).map_err(|e| Failure::from_io(path, &e))?;
                }
                Ok(Some((kind::DATA_END, _))) => break,
                Ok(Some(_)) => return Err(Failure::new(FailureKind::InvalidRequest, "unexpected frame")),
                Ok(None) | Err(_) => {
                    return Err(Failure::new(FailureKind::Io, "connection closed before the end of the data"))
                }
            }
        }
        file.sync_all().map_err(|e| Failure::from_io(path, &e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o777)).map_err(|e| Failure::from_io(path, &e))?;
        fs::rename(&tmp, target).map_err(|e| Failure::from_io(path, &e))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(total)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_name);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    use crate::protocol::{kind, read_frame, write_frame, write_json, Failure, FailureKind, Request};
    use crate::supervisor::testing::start;

    #[test]
    fn files_round_trip_and_limits_hold() {
        let (dir, sock) = start();
        let path = dir.path().join("sub/dir/f.txt").display().to_string();
        let mut c = UnixStream::connect(&sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::WriteFile { path: path.clone(), max_bytes: 100, mode: 0o4755 })
            .unwrap();
        write_frame(&mut c, kind::DATA, b"content").unwrap();
        write_frame(&mut c, kind::DATA_END, &[]).unwrap();
        assert_eq!(read_frame(&mut c).unwrap().unwrap().0, kind::DONE);
        assert_eq!(fs::read(&path).unwrap(), b"content");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o755, "setuid bits are dropped");

        let mut c = UnixStream::connect(&sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::ReadFile { path: path.clone(), max_bytes: 3 }).unwrap();
        let (k, p) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        assert_eq!(serde_json::from_slice::<Failure>(&p).unwrap().kind, FailureKind::TooLarge);

        let mut c = UnixStream::connect(&sock).unwrap();
        write_json(&mut c, kind::REQUEST, &Request::WriteFile { path: path.clone(), max_bytes: 4, mode: 0o644 })
            .unwrap();
        write_frame(&mut c, kind::DATA, b"too long").unwrap();
        let (k, _) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        assert_eq!(fs::read(&path).unwrap(), b"content", "a failed write leaves the old content");
    }
}
