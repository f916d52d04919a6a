//! A site whose certificate the browser does not trust is never opened: poed keeps
//! Chromium's certificate checks (a tab that ignored them would hand the signed-in session
//! to whoever sits between it and the site). Real Chromium, the real binaries, and an
//! `openssl s_server` on loopback with a self-signed certificate in place of the site; the
//! request fails at once with `site_error` naming the browser's certificate error.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run, within, Daemon, STEP};

/// A loopback HTTPS server with a self-signed certificate (killed on drop).
struct UntrustedSite {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl UntrustedSite {
    async fn start(dir: &Path) -> UntrustedSite {
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        let made = tokio::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("openssl (scripts/ensure-deps.sh installs it)");
        assert!(made.success(), "openssl could not make a certificate");
        // A free port: taken, noted, given back for the server.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let child = tokio::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl s_server");
        within(Duration::from_secs(10), "the TLS server to listen", async {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        UntrustedSite { child, addr }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_with_an_untrusted_certificate_is_not_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = UntrustedSite::start(dir.path()).await;
    let base = format!("https://{}", site.addr);
    let daemon = Daemon::start(&base, &[]).await;
    let started = Instant::now();
    let out = run(daemon.poectl(&["ask", "Hello there"])).await;
    let took = started.elapsed();
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains("site_error") && out.stderr.contains("ERR_CERT"),
        "the error names the browser's certificate error: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("certificate is not trusted"),
        "the error says what to do: {}",
        out.stderr
    );
    // At once, not after the prompt box's timeout (the server's page has none).
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(out.stdout.is_empty(), "no answer text: {}", out.stdout);
    // The daemon is still there for the next request.
    let again = run(daemon.poectl(&["status"])).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    let status = within(STEP, "poed to stop", daemon.stop()).await;
    assert!(status.success(), "{status:?}");
    site.stop().await;
}
