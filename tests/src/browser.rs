//! A real browser for the dashboard tests: Debian's headless Chromium driven
//! through ChromeDriver's W3C WebDriver HTTP API (a few JSON calls over
//! loopback, so no WebDriver crate and its HTTP stack).
//!
//! Fenced to loopback: background networking, component updates, sync and
//! QUIC are off, and every host name but 127.0.0.1 fails to resolve. TLS is
//! verified by pinning: Chromium accepts exactly the controller's key
//! (`--ignore-certificate-errors-spki-list`), nothing else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One ChromeDriver process, in its own process group so that dropping it
/// ends Chromium too.
pub struct Driver {
    child: Child,
    port: u16,
    _profiles: tempfile::TempDir,
}

/// One browser window (a WebDriver session) with its own profile, so its
/// cookies are its own.
pub struct Browser<'d> {
    driver: &'d Driver,
    id: String,
}

impl Driver {
    /// Starts ChromeDriver on a free loopback port (an error naming the package when missing).
    pub async fn start() -> Result<Driver> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                bail!("{bin} is missing: apt-get install chromium chromium-driver (.ci/run does)");
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let profiles = tempfile::tempdir()?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                profiles.path().join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let driver = Driver {
            child,
            port,
            _profiles: profiles,
        };
        let t = Instant::now();
        loop {
            if let Ok(v) = driver.call("GET", "/status", None).await
                && v["value"]["ready"] == json!(true)
            {
                return Ok(driver);
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("chromedriver did not get ready on port {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new window that trusts exactly the TLS key whose SPKI SHA-256 is `spki_pin` (base64).
    pub async fn browser(&self, spki_pin: &str) -> Result<Browser<'_>> {
        let profile = tempfile::tempdir_in(self._profiles.path())?.keep();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1400,1000".to_owned(),
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--ignore-certificate-errors-spki-list={spki_pin}"),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": false,
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let v = self.call("POST", "/session", Some(caps)).await?;
        let id = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {v}"))?
            .to_owned();
        Ok(Browser { driver: self, id })
    }

    /// One WebDriver call: HTTP/1.1 with `Connection: close`, JSON in and out;
    /// a WebDriver error (`value.error`) is an Err with its message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let (head, json_text) = tokio::time::timeout(Duration::from_secs(90), read_answer(&mut s))
            .await
            .map_err(|_| anyhow!("chromedriver did not answer {method} {path} within 90 s"))??;
        // ChromeDriver answers with Content-Length; a chunked answer would start with its size.
        let json_text = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(&json_text)
        } else {
            json_text
        };
        let v: Value = serde_json::from_str(&json_text).with_context(|| format!("{method} {path}: {json_text}"))?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!("{method} {path}: {e}: {}", v["value"]["message"]);
        }
        Ok(v)
    }
}

/// One HTTP answer: its head, and its body as long as Content-Length says
/// (ChromeDriver says `Connection: close` but keeps the socket open), or to EOF.
async fn read_answer(s: &mut tokio::net::TcpStream) -> Result<(String, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            let body_start = end + 4;
            if let Some(len) = len {
                while raw.len() < body_start + len {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        bail!("the answer ended {} bytes short", body_start + len - raw.len());
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                return Ok((
                    head,
                    String::from_utf8_lossy(&raw[body_start..body_start + len]).into_owned(),
                ));
            }
            if n == 0 {
                return Ok((head, String::from_utf8_lossy(&raw[body_start..]).into_owned()));
            }
        } else if n == 0 {
            bail!("the connection closed before a whole HTTP head");
        }
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: ChromeDriver and the Chromium processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

impl Browser<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url }))).await.map(drop)
    }

    pub async fn url(&self) -> Result<String> {
        Ok(self.call("GET", "/url", None).await?["value"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    async fn find(&self, css: &str) -> Result<String> {
        let v = self
            .call("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await?;
        v["value"][ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no element id for {css}: {v}"))
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> Result<usize> {
        let v = self
            .call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v["value"].as_array().map_or(0, Vec::len))
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await
            .map(drop)
    }

    /// Clicks something that loads a new page, and waits until the new page has loaded
    /// (a click returns once dispatched, not when the navigation it starts is done).
    pub async fn click_to_navigate(&self, css: &str) -> Result<()> {
        self.js("window.__kcdsyncOld = true", json!([])).await?;
        self.click(css).await?;
        let t = Instant::now();
        loop {
            // Mid-navigation a script may find no document: not there yet.
            let done = self
                .js(
                    "return window.__kcdsyncOld === undefined && document.readyState === 'complete'",
                    json!([]),
                )
                .await
                .unwrap_or(json!(false));
            if done == json!(true) {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("clicking {css} loaded no new page within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.call("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })))
            .await
            .map(drop)
    }

    pub async fn text(&self, css: &str) -> Result<String> {
        let e = self.find(css).await?;
        Ok(self.call("GET", &format!("/element/{e}/text"), None).await?["value"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Runs `script` in the page (a returned Promise is awaited) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Result<Value> {
        Ok(self
            .call("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
            .await?["value"]
            .clone())
    }

    /// Waits until `script` returns true in the page.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<()> {
        let t = Instant::now();
        loop {
            if self.js(script, json!([])).await? == json!(true) {
                return Ok(());
            }
            if t.elapsed() > timeout {
                bail!("{what}: not true within {timeout:?} ({script})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the window to `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let v = self.call("GET", "/screenshot", None).await?;
        let png = base64_decode(v["value"].as_str().unwrap_or(""))?;
        std::fs::create_dir_all(dir)?;
        let p = dir.join(format!("{name}.png"));
        std::fs::write(&p, png)?;
        Ok(p)
    }

    pub async fn close(self) -> Result<()> {
        self.driver
            .call("DELETE", &format!("/session/{}", self.id), None)
            .await
            .map(drop)
    }
}

/// The base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo: what
/// `--ignore-certificate-errors-spki-list` pins.
pub fn spki_pin(cert_pem: &Path) -> Result<String> {
    let pem = std::fs::read(cert_pem).with_context(|| cert_pem.display().to_string())?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| anyhow!("{}: {e}", cert_pem.display()))?;
    let cert = pem.parse_x509().map_err(|e| anyhow!("{}: {e}", cert_pem.display()))?;
    let d = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Ok(base64_encode(d.as_ref()))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(b: &[u8]) -> String {
    let mut out = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for ch in s.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == ch)
            .ok_or_else(|| anyhow!("not base64: {ch}"))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes(), "{e}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
    }
}
