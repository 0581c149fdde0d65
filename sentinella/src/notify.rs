//! systemd's readiness protocol (`Type=notify`): one datagram to the socket named by
//! `NOTIFY_SOCKET`, as `sd_notify(3)` sends it. Without that variable (not started by systemd)
//! nothing is sent. A failure to notify is logged, never fatal: the service runs either way,
//! and systemd reports a start that never became ready.

/// Tells systemd the service is ready: the store is migrated, the gateway accepts devices and
/// the API listens.
pub fn ready() {
    send("READY=1\nSTATUS=running");
}

/// Tells systemd a stop has begun (in-flight batches are being committed and acknowledged).
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping: flushing in-flight batches and acks");
}

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&path, state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

#[cfg(unix)]
fn send_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux): '@' stands for the leading NUL byte.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract sockets need Linux"));
        }
    }
    socket.send_to(state.as_bytes(), std::path::Path::new(path))?;
    Ok(())
}

#[cfg(not(unix))]
fn send_to(_path: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
