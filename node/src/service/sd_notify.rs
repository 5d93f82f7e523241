//! systemd's readiness protocol: one datagram of `KEY=value` lines to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), as `sd_notify(3)` sends.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
pub const SOCKET_VARIABLE: &str = "NOTIFY_SOCKET";

/// Sends `state` (`"READY=1"`, `"STOPPING=1"`, lines joined by `\n`) to the service manager.
/// Returns `Ok(false)` when no manager listens (`$NOTIFY_SOCKET` unset or empty): the node was
/// not started as a notify service, and nothing is sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(socket) = std::env::var_os(SOCKET_VARIABLE).filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let address = address(socket.as_encoded_bytes())?;
    let sender = UnixDatagram::unbound()?;
    let sent = sender.send_to_addr(state.as_bytes(), &address)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(true)
}

/// The socket's address: a path, or `@name` for a name in Linux's abstract namespace.
fn address(socket: &[u8]) -> io::Result<SocketAddr> {
    match socket.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None if socket.starts_with(b"/") => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(socket))
        }
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "${SOCKET_VARIABLE} is `{}`: neither an absolute path nor an @abstract name",
                String::from_utf8_lossy(socket)
            ),
        )),
    }
}

/// Tells the service manager that the node is ready and where its UI is; logged when it fails.
pub fn ready(ui_url: &str) {
    send(&format!(
        "READY=1\nSTATUS=serving the UI and API at {ui_url}"
    ));
}

/// Tells the service manager that the node is stopping its tasks and will exit.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping: ending runs, then flushing the state");
}

fn send(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "told the service manager"),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            error = %e,
            socket = ?std::env::var_os(SOCKET_VARIABLE),
            "could not tell the service manager (sd_notify)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn addresses_are_paths_or_abstract_names_and_nothing_else() {
        let path = super::address(b"/run/systemd/notify").expect("path");
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = super::address(b"@taskmesh-test").expect("abstract");
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(
            abstract_name.as_abstract_name(),
            Some(&b"taskmesh-test"[..])
        );
        let error = super::address(b"relative/notify").expect_err("relative");
        assert!(error.to_string().contains("`relative/notify`"), "{error}");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("taskmesh-sd-notify-test-{}", std::process::id());
        let receiver = std::os::unix::net::UnixDatagram::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr"),
        )
        .expect("bind");
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let sender = std::os::unix::net::UnixDatagram::unbound().expect("socket");
        let to = super::address(format!("@{name}").as_bytes()).expect("address");
        sender.send_to_addr(b"READY=1", &to).expect("send");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
