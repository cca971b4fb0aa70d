//! The SDKs' pytest suites: the venvs `scripts/sdk-deps` makes, and a pytest run in one of them
//! against a test's server.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::text;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository")
}

/// The python of the venv that `scripts/sdk-deps PART` (`--python`, `--providers`) installs
/// and prints.
pub fn venv_python(part: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/sdk-deps")).arg(part).output().expect("scripts/sdk-deps runs");
    assert!(out.status.success(), "scripts/sdk-deps {part}: {}", text(&out.stderr));
    let python = PathBuf::from(text(&out.stdout).trim());
    assert!(python.is_file(), "the python of scripts/sdk-deps {part} at {}", python.display());
    python
}

/// Runs pytest on `tests` (a directory of the repository) with `python`, in the repository,
/// with nothing in its environment but `PATH`, `env` and `PYTEST_ADDOPTS` when it is set (to
/// run a part while working on it); prints its report and asserts that the suite passed: its
/// exit status, and its summary naming passed tests and no failure.
pub fn pytest(python: &Path, tests: &str, env: &[(&str, &OsStr)]) {
    let mut pytest = Command::new(python);
    pytest
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-v", tests])
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied());
    if let Some(opts) = std::env::var_os("PYTEST_ADDOPTS") {
        pytest.env("PYTEST_ADDOPTS", opts);
    }
    let out = pytest.output().expect("python runs");
    let report = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the suite {tests} failed ({}):\n{report}", out.status);
    assert!(report.contains(" passed") && !report.contains(" failed"), "{report}");
}
