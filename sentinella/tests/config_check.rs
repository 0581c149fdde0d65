//! `sentinella config check`, run as the binary: one row per bad value, each with the message
//! it must print and the exit code; `sentinella run` refuses the same configurations with the
//! same messages. Every row writes its configuration (and files) into a fresh folder.

#![allow(clippy::unwrap_used)] // Test set-up: a failure is the test failing.

use std::path::Path;
use std::process::{Command, Output};

/// What a row's configuration file holds, with `{dir}` standing for its folder.
struct Row {
    name: &'static str,
    toml: &'static str,
    /// Extra files in the folder: certificates, keys, a JWKS.
    setup: fn(&Path),
    /// Extra arguments before `config check` (e.g. `--database-url`).
    args: &'static [&'static str],
    /// The exit code of `config check`.
    code: i32,
    /// What its standard error must contain.
    messages: &'static [&'static str],
}

fn nothing(_: &Path) {}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A server certificate and its key (`cert.pem`, `key.pem`, 0600), and a second key that
/// belongs to another certificate (`other.key`).
fn tls_files(dir: &Path) {
    let ca = pki::DeviceCa::generate("test CA").unwrap();
    let server = ca.issue_server(&["localhost".into()]).unwrap();
    let other = ca.issue_server(&["localhost".into()]).unwrap();
    write_mode(&dir.join("cert.pem"), &server.cert_pem, 0o644);
    write_mode(&dir.join("key.pem"), &server.key_pem, 0o600);
    write_mode(&dir.join("other.key"), &other.key_pem, 0o600);
    write_mode(&dir.join("open.key"), &server.key_pem, 0o644);
    write_mode(&dir.join("ca.pem"), ca.cert_pem(), 0o644);
    write_mode(&dir.join("garbage.pem"), "not a certificate\n", 0o600);
}

fn bad_jwks(dir: &Path) {
    std::fs::write(dir.join("jwks.json"), "{\"keys\": [{\"kty\": ").unwrap();
}

/// A device CA whose key every user may read.
fn open_ca_key(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let pki_dir = dir.join("data/pki");
    let (_, created) = pki::DeviceCa::load_or_create(&pki_dir).unwrap();
    assert!(created);
    std::fs::set_permissions(
        pki_dir.join(pki::CA_KEY_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
}

fn data_is_a_file(dir: &Path) {
    std::fs::write(dir.join("data"), "").unwrap();
}

const ROWS: &[Row] = &[
    Row {
        name: "the defaults are valid",
        toml: "",
        setup: nothing,
        args: &[],
        code: 0,
        messages: &["configuration OK"],
    },
    Row {
        name: "the packaged configuration is valid",
        toml: "@packaged",
        setup: nothing,
        args: &[],
        code: 0,
        messages: &["configuration OK"],
    },
    Row {
        name: "an unknown key",
        toml: "[api]\nport = 8080\n",
        setup: nothing,
        args: &[],
        code: 2,
        messages: &["unknown field `port`"],
    },
    Row {
        name: "a value of the wrong type",
        toml: "[api]\nlisten = \"everywhere\"\n",
        setup: nothing,
        args: &[],
        code: 2,
        messages: &["parse config", "invalid socket address"],
    },
    Row {
        name: "the plain listener on the network",
        toml: "[gateway]\nlisten = \"0.0.0.0:1884\"\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &[
            "gateway.listen: the plain (password, no TLS) device listener may bind only a \
             loopback address, not 0.0.0.0:1884",
        ],
    },
    Row {
        name: "two listeners on one port",
        toml: "[api]\nlisten = \"127.0.0.1:8883\"\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &[
            "gateway.tls_listen: 0.0.0.0:8883 clashes with api.listen (127.0.0.1:8883): two \
             listeners cannot share a port",
        ],
    },
    Row {
        name: "zero durations and counts",
        toml: "[api]\nsession_ttl = \"0s\"\nmax_connections = 0\n[gateway]\nbatch_max_rows = 0\n\
               [gateway.alerts]\ntick = \"0s\"\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &[
            "the configuration has 4 problems:",
            "api.session_ttl: must be longer than zero",
            "api.max_connections: must be at least 1",
            "gateway.batch_max_rows: must be at least 1",
            "gateway.alerts.tick: must be longer than zero",
        ],
    },
    Row {
        name: "a packet limit below the payload limit",
        toml: "[gateway]\nmax_packet_size = 1000\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &[
            "gateway.max_packet_size: 1000 bytes is below the largest readings payload a device \
             may send (16384 bytes)",
        ],
    },
    Row {
        name: "an exempt network that is not one",
        toml: "[gateway]\nper_ip_exempt = [\"10.0.0.0/33\"]\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &["gateway.per_ip_exempt: \"10.0.0.0/33\" is not a network in CIDR notation"],
    },
    Row {
        name: "a server name that is not one",
        toml: "[gateway]\ntls_server_names = [\"not a name\"]\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &[
            "gateway.tls_server_names: \"not a name\" is neither a DNS name nor an IP address",
        ],
    },
    Row {
        name: "a TLS certificate without its key",
        toml: "[api]\ntls_cert = \"{dir}/cert.pem\"\n",
        setup: tls_files,
        args: &[],
        code: 1,
        messages: &["api.tls_key: must be set with tls_cert (or neither)"],
    },
    Row {
        name: "valid TLS files for the API and the edge",
        toml: "[api]\ntls_cert = \"{dir}/cert.pem\"\ntls_key = \"{dir}/key.pem\"\n[gateway]\n\
               tls_cert = \"{dir}/cert.pem\"\ntls_key = \"{dir}/key.pem\"\n\
               tls_client_ca = \"{dir}/ca.pem\"\n",
        setup: tls_files,
        args: &[],
        code: 0,
        messages: &["configuration OK"],
    },
    Row {
        name: "a certificate file that does not exist",
        toml: "[api]\ntls_cert = \"{dir}/missing.pem\"\ntls_key = \"{dir}/key.pem\"\n",
        setup: tls_files,
        args: &[],
        code: 1,
        messages: &["api.tls_cert: {dir}/missing.pem: cannot read it: No such file or directory"],
    },
    Row {
        name: "a key that belongs to another certificate",
        toml: "[gateway]\ntls_cert = \"{dir}/cert.pem\"\ntls_key = \"{dir}/other.key\"\n",
        setup: tls_files,
        args: &[],
        code: 1,
        messages: &[
            "gateway.tls_key: {dir}/other.key does not go with the certificate {dir}/cert.pem",
        ],
    },
    Row {
        name: "a private key every user can read",
        toml: "[api]\ntls_cert = \"{dir}/cert.pem\"\ntls_key = \"{dir}/open.key\"\n",
        setup: tls_files,
        args: &[],
        code: 1,
        messages: &[
            "api.tls_key: {dir}/open.key has mode 0644: a private key must not be accessible to \
             every user",
        ],
    },
    Row {
        name: "a client CA file without a certificate",
        toml: "[gateway]\ntls_client_ca = \"{dir}/garbage.pem\"\n",
        setup: tls_files,
        args: &[],
        code: 1,
        messages: &["gateway.tls_client_ca: {dir}/garbage.pem: no PEM certificate in it"],
    },
    Row {
        name: "a JWKS file that is not JSON",
        toml: "[api.oidc]\nissuer = \"https://idp.example\"\naudience = \"sentinella\"\n\
               jwks_file = \"{dir}/jwks.json\"\n",
        setup: bad_jwks,
        args: &[],
        code: 1,
        messages: &["api.oidc.jwks_file:"],
    },
    Row {
        name: "a JWKS file that does not exist",
        toml: "[api.oidc]\nissuer = \"\"\naudience = \"sentinella\"\n\
               jwks_file = \"{dir}/nowhere.json\"\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &[
            "api.oidc.issuer: must not be empty",
            "api.oidc.jwks_file:",
            "nowhere.json",
        ],
    },
    Row {
        name: "a data directory that is a file",
        toml: "",
        setup: data_is_a_file,
        args: &[],
        code: 1,
        messages: &[
            "the configuration has 1 problem:",
            "data_dir: data is not a directory",
        ],
    },
    Row {
        name: "a data directory under a file",
        toml: "data_dir = \"{dir}/data/below\"\n",
        setup: data_is_a_file,
        args: &[],
        code: 1,
        messages: &[
            "the configuration has 1 problem:",
            "data_dir: {dir}/data/below cannot be created: {dir}/data is not a directory",
        ],
    },
    Row {
        name: "a device CA key every user can read",
        toml: "",
        setup: open_ca_key,
        args: &[],
        code: 1,
        messages: &[
            "data_dir: the device CA key data/pki/ca.key has mode 0644: it must be readable by \
             its owner only",
        ],
    },
    Row {
        name: "a database that does not answer",
        toml: "",
        setup: nothing,
        args: &[
            "--database-url",
            "postgres://sentinella:s3cret@127.0.0.1:1/none",
        ],
        code: 1,
        messages: &["database_url: cannot reach postgres://sentinella:***@127.0.0.1:1/none"],
    },
    Row {
        name: "more device connections than descriptors",
        toml: "[gateway]\nmax_connections = 100000000\n",
        setup: nothing,
        args: &[],
        code: 1,
        messages: &["gateway.max_connections: [gateway] max_connections = 100000000 needs"],
    },
];

fn sentinella(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentinella"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SENTINELLA_") || key.starts_with("RUST_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .args(["--log", "warn"])
        .args(args)
        .output()
        .expect("run sentinella")
}

fn config_file(row: &Row, dir: &Path) -> String {
    let text = if row.toml == "@packaged" {
        // The Debian package's configuration, with its state directory moved here.
        include_str!("../../packaging/debian/sentinella.toml").replace(
            "/var/lib/sentinella",
            &dir.join("state").display().to_string(),
        )
    } else {
        row.toml.replace("{dir}", &dir.display().to_string())
    };
    let path = dir.join("sentinella.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn each_bad_value_has_its_message_and_exit_code() {
    let mut failures = Vec::new();
    for row in ROWS {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        (row.setup)(&dir);
        let config = config_file(row, &dir);
        let mut args: Vec<&str> = vec!["--config", &config];
        args.extend(row.args);
        args.extend(["config", "check"]);
        let out = sentinella(&dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() != Some(row.code) {
            failures.push(format!(
                "{}: exit {:?}, expected {}\n{stderr}",
                row.name,
                out.status.code(),
                row.code
            ));
        }
        for m in row.messages {
            let m = m.replace("{dir}", &dir.display().to_string());
            if !stderr.contains(&m) {
                failures.push(format!("{}: no {m:?} in\n{stderr}", row.name));
            }
        }
        if row.code != 2 && !stdout.contains("[gateway.alerts]") {
            failures.push(format!(
                "{}: the effective configuration is not printed:\n{stdout}",
                row.name
            ));
        }
        if stdout.contains("s3cret") || stderr.contains("s3cret") {
            failures.push(format!("{}: the database password is printed", row.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn run_refuses_the_same_problems_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    tls_files(&dir);
    let toml = "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{dir}/cert.pem\"\n\
                tls_key = \"{dir}/other.key\"\nsession_ttl = \"0s\"\n[gateway]\n\
                listen = \"0.0.0.0:0\"\ntls_listen = \"127.0.0.1:0\"\n\
                per_ip_exempt = [\"300.0.0.0/8\"]\n"
        .replace("{dir}", &dir.display().to_string());
    let config = dir.join("sentinella.toml");
    std::fs::write(&config, toml).unwrap();
    let config = config.display().to_string();
    let check = sentinella(&dir, &["--config", &config, "config", "check"]);
    let run = sentinella(&dir, &["--config", &config, "run"]);
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(run.status.code(), Some(1), "run must refuse to start");
    let problems = |out: &Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("  - "))
            .map(str::to_owned)
            .collect()
    };
    let listed = problems(&check);
    assert_eq!(listed.len(), 4, "{listed:#?}");
    assert_eq!(problems(&run), listed);
    // Nothing was started or created: no database, no device CA.
    assert!(!dir.join("data").exists());
}

#[test]
fn a_reachable_postgresql_is_valid_and_its_password_redacted() {
    let Ok(url) = std::env::var("SENTINELLA_TEST_PG") else {
        panic!("SENTINELLA_TEST_PG must name the test PostgreSQL (scripts/test.sh sets it)");
    };
    let dir = tempfile::tempdir().unwrap();
    let with_password = url.replacen("://postgres@", "://postgres:unused-secret@", 1);
    let out = sentinella(
        dir.path(),
        &["--database-url", &with_password, "config", "check"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("postgres:***@"), "{stdout}");
    assert!(!stdout.contains("unused-secret") && !stderr.contains("unused-secret"));
}
