//! The `sentinella` binary keeps its data private.

/// M5: the data dir is 0700 and the SQLite database with its `-wal` and `-shm` 0600, also
/// when they existed with looser modes.
#[cfg(unix)]
#[test]
fn the_data_dir_and_the_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let migrate = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinella"))
            .arg("--data-dir")
            .arg(&data)
            .arg("migrate")
            .env_remove("SENTINELLA_DATABASE_URL")
            .env_remove("SENTINELLA_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    migrate();
    let db = data.join("sentinella.sqlite");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&db), 0o600);
    for suffix in ["-wal", "-shm"] {
        let p = data.join(format!("sentinella.sqlite{suffix}"));
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    // A data dir and database from an older version, world-readable: made private.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    migrate();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&db), 0o600);
}
