//! What a browser test needs around the nodes: the tools on the machine ([`Tools`]), a
//! home folder whose NSS database holds the certificates a person would have imported
//! ([`Home`]), a real Chromium driven over WebDriver ([`Browser`]) with the checks made on
//! every page it shows, the same pages' headers read by a small HTTPS client
//! ([`console_get`]), and a page of another site ([`OtherSite`]).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use serde::Deserialize;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use trm_core::ids::Role;
use trm_tests::TestFederation;

/// Debian's Chromium (a wrapper script that reads /etc/chromium.d, as a person's would).
const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromium-driver, of the same version as the browser.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The managed policy that picks the test's client certificate without a dialog.
const POLICY: &str = "/etc/chromium/policies/managed/trm-console-tests.json";
/// The variable naming axe-core's `axe.min.js`.
pub const AXE_VAR: &str = "TRM_AXE_JS";
/// The variable naming the folder the suite saves its screenshots in, when set.
pub const SCREENSHOTS_VAR: &str = "TRM_CONSOLE_SCREENSHOTS";
/// How a machine gets all of it.
const SETUP: &str = "run `sudo tests/browser/setup.sh` once (it installs Debian's chromium, \
                     chromium-driver and libnss3-tools when missing, the Chromium policy and \
                     axe-core) and export TRM_AXE_JS as it prints";
/// The WCAG 2.1 levels A and AA, as axe-core tags its rules.
const WCAG: &str = "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']";
/// How long a page, a wait or a driver's start may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// The programs and files the suite needs, each checked before anything starts.
#[derive(Clone)]
pub struct Tools {
    axe: Arc<String>,
    screenshots: Option<PathBuf>,
}

impl Tools {
    /// Finds every tool, or fails saying which is missing and how to get it.
    pub fn find() -> Result<Self> {
        for (what, path) in [
            ("Debian's chromium", CHROMIUM),
            ("Debian's chromium-driver", CHROMEDRIVER),
            ("certutil (libnss3-tools)", "/usr/bin/certutil"),
            ("pk12util (libnss3-tools)", "/usr/bin/pk12util"),
        ] {
            ensure!(
                Path::new(path).exists(),
                "the browser suite needs {what} at {path}: {SETUP}"
            );
        }
        let policy = std::fs::read_to_string(POLICY).unwrap_or_default();
        ensure!(
            policy.contains("AutoSelectCertificateForUrls"),
            "the browser suite needs the Chromium policy {POLICY} that chooses the test's \
             client certificate (tests/browser/chromium-policy.json): {SETUP}"
        );
        let axe = std::env::var_os(AXE_VAR).with_context(|| {
            format!("the browser suite needs {AXE_VAR} (axe-core's axe.min.js): {SETUP}")
        })?;
        let axe = std::fs::read_to_string(&axe).with_context(|| {
            format!(
                "{AXE_VAR}={} cannot be read: {SETUP}",
                axe.to_string_lossy()
            )
        })?;
        ensure!(
            axe.contains("axe.run") || axe.contains("axe v"),
            "{AXE_VAR} is not axe-core: {SETUP}"
        );
        Ok(Self {
            axe: Arc::new(axe),
            screenshots: std::env::var_os(SCREENSHOTS_VAR).map(PathBuf::from),
        })
    }
}

/// A home folder as a person's browser has it: an NSS database (`.pki/nssdb`) that trusts
/// the node's services CA (no certificate error is ignored anywhere) and holds the client
/// certificate imported from the PKCS#12 file `trmctl client issue --p12` makes, if any.
pub struct Home {
    dir: TempDir,
}

impl Home {
    /// A home that trusts node `node`'s services CA and holds `role`'s client certificate
    /// of that node (none: a browser without a certificate).
    pub fn new(fed: &TestFederation, node: &str, role: Option<Role>) -> Result<Self> {
        let home = Self {
            dir: tempfile::tempdir()?,
        };
        let db = home.dir.path().join(".pki/nssdb");
        std::fs::create_dir_all(&db)?;
        let db = format!("sql:{}", db.display());
        run("certutil", &["-N", "-d", &db, "--empty-password"])?;
        let nd = fed.node_dir(node);
        let ca = nd.join("services-ca.pem");
        run(
            "certutil",
            &[
                "-A",
                "-d",
                &db,
                "-n",
                &format!("TRM {node} services CA"),
                "-t",
                "C,,",
                "-i",
                &ca.to_string_lossy(),
            ],
        )?;
        if let Some(role) = role {
            let (cert, key) = client_files(&nd, role);
            let passphrase = uuid::Uuid::new_v4().simple().to_string();
            let p12 = trmctl::client::p12_bytes(
                (
                    &trm_crypto::files::read(&cert)?,
                    &trm_crypto::files::read(&key)?,
                ),
                &trm_crypto::files::read(&nd.join("tls/client-ca.pem"))?,
                &format!("TRM {node} {role}"),
                &passphrase,
            )?;
            let file = home.dir.path().join("browser.p12");
            std::fs::write(&file, p12)?;
            run(
                "pk12util",
                &["-i", &file.to_string_lossy(), "-d", &db, "-W", &passphrase],
            )?;
            std::fs::remove_file(&file)?;
        }
        Ok(home)
    }
}

/// Runs one of the NSS tools, failing with what it said.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}: {SETUP}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}{}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The PEM files of `role`'s test client certificate at node folder `dir`.
fn client_files(dir: &Path, role: Role) -> (PathBuf, PathBuf) {
    let base = dir.join("clients").join(role.as_str());
    (base.with_extension("pem"), base.with_extension("key"))
}

/// One accessibility rule a page breaks, as axe-core reports it.
#[derive(Debug, Deserialize)]
pub struct Violation {
    pub id: String,
    pub impact: Option<String>,
    pub help: String,
    pub nodes: Vec<ViolatingNode>,
}

/// An element that breaks a rule: its CSS path and what to fix.
#[derive(Debug, Deserialize)]
pub struct ViolatingNode {
    pub target: Vec<String>,
    pub summary: Option<String>,
}

/// What a page holds that the console must never have: inline scripts or styles, browser
/// storage, cookies.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct Residue {
    inline_scripts: u32,
    style_attributes: u32,
    style_elements: u32,
    stored_items: u32,
    cookies: String,
}

/// A headless Chromium of its own (its own home, profile and chromedriver), driven over
/// WebDriver. Every page it goes to is recorded ([`Browser::visited`]).
pub struct Browser {
    client: Client,
    driver: tokio::process::Child,
    tools: Tools,
    visited: Vec<String>,
    _home: Home,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a port of its choosing with `home` as `HOME` (where Chromium
    /// finds its NSS database), and a session of a headless Chromium with a new profile.
    pub async fn start(tools: &Tools, home: Home) -> Result<Self> {
        Self::start_in(tools, home, "en-GB").await
    }

    /// As [`Browser::start`], for a person whose browser asks for pages in `lang` first
    /// (its `Accept-Language`).
    pub async fn start_in(tools: &Tools, home: Home, lang: &str) -> Result<Self> {
        let mut driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .env("HOME", home.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}: {SETUP}"))?;
        let stdout = driver.stdout.take().context("chromedriver's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return Ok(rest.trim_end_matches('.').trim().parse::<u16>()?);
                }
            }
            bail!("chromedriver stopped before it listened")
        })
        .await
        .context("chromedriver did not start")??;
        // The rest of what it prints, so that it never waits on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let profile = tempfile::tempdir()?;
        let caps = serde_json::json!({
            "browserName": "chrome",
            // Every certificate is checked: the services CA is trusted in the NSS database.
            "acceptInsecureCerts": false,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    // The machine has no network: nothing may reach out on its own.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1200,800",
                    format!("--lang={lang}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": { "intl.accept_languages": lang },
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            bail!("capabilities are an object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("a Chromium session")?;
        Ok(Self {
            client,
            driver,
            tools: tools.clone(),
            visited: Vec::new(),
            _home: home,
            _profile: profile,
        })
    }

    /// Goes to `url` and waits for the page.
    pub async fn open(&mut self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))?;
        self.record_url().await
    }

    /// Records where the browser is now (after a click, a form, a redirect).
    pub async fn record_url(&mut self) -> Result<()> {
        let url = self.client.current_url().await?;
        self.visited.push(url.to_string());
        Ok(())
    }

    /// Returns the path and query of the page shown.
    pub async fn path(&self) -> Result<String> {
        let url = self.client.current_url().await?;
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        })
    }

    /// Returns the HTTP status of the page shown, as the browser received it (Navigation
    /// Timing's `responseStatus`).
    pub async fn status(&self) -> Result<u64> {
        let status = self
            .client
            .execute(
                "const n = performance.getEntriesByType('navigation')[0];
                 return n ? n.responseStatus : 0;",
                vec![],
            )
            .await?;
        status.as_u64().context("no status of the page")
    }

    /// Returns the text of the page shown, as a person reads it.
    pub async fn text(&self) -> Result<String> {
        let text = self
            .client
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// Returns how many elements `css` finds on the page shown.
    pub async fn count(&self, css: &str) -> Result<usize> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    /// Returns the text of the table row whose record id (or guard) is `id`.
    pub async fn row(&self, id: &str) -> Result<String> {
        let found = self
            .client
            .find(Locator::XPath(&format!("//tr[td//code[text()='{id}']]")))
            .await;
        let Ok(row) = found else {
            bail!("no row of {id} on {}", self.path().await?);
        };
        Ok(row.text().await?)
    }

    /// Waits until the row of record `id` says `status`, and returns its text.
    pub async fn wait_for_row(&self, id: &str, status: &str) -> Result<String> {
        let xpath = format!("//tr[td//code[text()='{id}'] and td[text()='{status}']]");
        let row = self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::XPath(&xpath))
            .await
            .with_context(|| format!("the row of {id} never said {status}"))?;
        Ok(row.text().await?)
    }

    /// Clicks the element `css` (a person's click: the browser sends its own headers).
    /// A click that submits a form may return before the browser has left the page: wait
    /// for where it leads ([`Browser::wait_for_path`], [`Browser::wait_for_row`]).
    pub async fn click(&self, css: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("nothing to click at {css}"))?
            .click()
            .await?;
        Ok(())
    }

    /// Types `value` into the empty text input `css`, as a person would.
    pub async fn fill(&self, css: &str, value: &str) -> Result<()> {
        let input = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no input at {css}"))?;
        input.clear().await?;
        input.send_keys(value).await?;
        Ok(())
    }

    /// Chooses the option of value `value` in the select `css`.
    pub async fn choose(&self, css: &str, value: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no select at {css}"))?
            .select_by_value(value)
            .await?;
        Ok(())
    }

    /// Returns the text of the first element `css` finds.
    pub async fn first_text(&self, css: &str) -> Result<String> {
        Ok(self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("nothing at {css}"))?
            .text()
            .await?)
    }

    /// Waits until the browser shows a page whose path and query start with `prefix`,
    /// records it and returns its path and query.
    pub async fn wait_for_prefix(&mut self, prefix: &str) -> Result<String> {
        let at = trm_tests::eventually(&format!("the browser at {prefix}.."), || async {
            let path = self.path().await?;
            Ok(path.starts_with(prefix).then_some(path))
        })
        .await?;
        self.record_url().await?;
        Ok(at)
    }

    /// Waits until the browser shows the page at `path` (and query), and records it.
    pub async fn wait_for_path(&mut self, path: &str) -> Result<()> {
        trm_tests::eventually(&format!("the browser at {path}"), || async {
            Ok((self.path().await? == path).then_some(()))
        })
        .await?;
        self.record_url().await
    }

    /// The checks every console page must pass, in the browser: no inline script or style
    /// (the DOM, as the browser built it), nothing in browser storage or cookies, the
    /// browser itself refusing an inline script (the CSP it received is in force), and no
    /// WCAG 2.1 A or AA violation by axe-core. Saves a screenshot named `shot` when asked.
    pub async fn check_page(&mut self, shot: Option<&str>) -> Result<()> {
        let path = self.path().await?;
        let residue: Residue = serde_json::from_value(
            self.client
                .execute(
                    "return {
                        inline_scripts: [...document.querySelectorAll('script')].filter(s => !s.src).length,
                        style_attributes: document.querySelectorAll('[style]').length,
                        style_elements: document.querySelectorAll('style').length,
                        stored_items: localStorage.length + sessionStorage.length,
                        cookies: document.cookie,
                    };",
                    vec![],
                )
                .await?,
        )?;
        assert_eq!(
            residue,
            Residue {
                inline_scripts: 0,
                style_attributes: 0,
                style_elements: 0,
                stored_items: 0,
                cookies: String::new(),
            },
            "{path}: inline script or style, storage or cookies"
        );
        // A script the page would run inline is refused by the browser (the page's CSP);
        // WebDriver's own scripts are not the page's and run (what axe-core needs).
        let inline_ran = self
            .client
            .execute(
                "const s = document.createElement('script');
                 s.textContent = 'window.trmInlineRan = true;';
                 document.head.appendChild(s);
                 const ran = window.trmInlineRan === true;
                 s.remove();
                 return ran;",
                vec![],
            )
            .await?;
        assert_eq!(
            inline_ran,
            serde_json::Value::Bool(false),
            "{path}: an inline script ran"
        );
        if let (Some(dir), Some(name)) = (&self.tools.screenshots, shot) {
            std::fs::create_dir_all(dir)?;
            std::fs::write(
                dir.join(format!("{name}.png")),
                self.client.screenshot().await?,
            )?;
        }
        let violations = self.axe().await?;
        assert!(
            violations.is_empty(),
            "{path}: WCAG 2.1 A/AA violations (axe-core):\n{}",
            describe(&violations)
        );
        Ok(())
    }

    /// Runs axe-core on the page shown (injected through WebDriver, never by the page).
    async fn axe(&self) -> Result<Vec<Violation>> {
        let loaded = self
            .client
            .execute(
                &format!(
                    "{}\n;return typeof window.axe === 'object';",
                    self.tools.axe
                ),
                vec![],
            )
            .await
            .context("injecting axe-core")?;
        ensure!(
            loaded == serde_json::Value::Bool(true),
            "axe-core did not load"
        );
        let found = self
            .client
            .execute(
                &format!(
                    "return axe.run(document, {{
                        runOnly: {{ type: 'tag', values: {WCAG} }},
                        resultTypes: ['violations'],
                    }}).then(r => r.violations.map(v => ({{
                        id: v.id,
                        impact: v.impact,
                        help: v.help,
                        nodes: v.nodes.map(n => ({{
                            target: n.target.map(t => String(t)),
                            summary: n.failureSummary,
                        }})),
                    }})));"
                ),
                vec![],
            )
            .await
            .context("running axe-core")?;
        Ok(serde_json::from_value(found)?)
    }

    /// Ends the session (chromedriver stops its Chromium), then chromedriver; returns
    /// the addresses visited.
    pub async fn close(mut self) -> Result<Vec<String>> {
        self.client.clone().close().await?;
        self.stop_driver();
        self.driver.wait().await?;
        Ok(std::mem::take(&mut self.visited))
    }

    /// Stops chromedriver and whatever it started that is still running (its process
    /// group, which this browser created).
    fn stop_driver(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_driver();
    }
}

/// The violations as a person fixing them would read them.
pub fn describe(violations: &[Violation]) -> String {
    let mut out = String::new();
    for v in violations {
        out.push_str(&format!(
            "- {} ({}): {}\n",
            v.id,
            v.impact.as_deref().unwrap_or("?"),
            v.help
        ));
        for n in &v.nodes {
            out.push_str(&format!(
                "    at {}: {}\n",
                n.target.join(" "),
                n.summary.as_deref().unwrap_or("").replace('\n', " ")
            ));
        }
    }
    out
}

/// The console address of node `node`, as a person types it.
pub fn console_url(fed: &TestFederation, node: &str, path: &str) -> Result<String> {
    let addr = fed.node(node)?.addrs.console.context("no console")?;
    Ok(format!("https://{addr}{path}"))
}

/// The status line and headers of `GET path` at node `node`'s console, read by a small
/// rustls client with `role`'s certificate (or none): what WebDriver cannot see.
pub async fn console_get(
    fed: &TestFederation,
    node: &str,
    role: Option<Role>,
    path: &str,
) -> Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n");
    let answer = trm_tests::console_send(fed, node, role, &request).await?;
    let (status, head) = (answer.status, answer.head);
    Ok((status, head))
}

/// Asserts the headers every console answer carries, on `GET path` as `role`.
pub async fn assert_headers(
    fed: &TestFederation,
    node: &str,
    role: Option<Role>,
    path: &str,
    status: u16,
) -> Result<()> {
    let (got, head) = console_get(fed, node, role, path).await?;
    assert_eq!(got, status, "{path}: {head}");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let csp = header("content-security-policy");
    for part in ["default-src 'none'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{path}: CSP {csp:?} lacks {part}");
    }
    assert!(
        !csp.contains("unsafe-inline"),
        "{path}: CSP allows inline: {csp}"
    );
    assert_eq!(header("cache-control"), "no-store", "{path}");
    Ok(())
}

/// A page of another site (plain HTTP on another loopback port: another origin) with a
/// form that posts to a console, as a hostile page would.
pub struct OtherSite {
    pub url: String,
    server: tokio::task::JoinHandle<()>,
}

impl OtherSite {
    /// Serves, on every request, a page with one button that posts `fields` to `action`.
    pub async fn serve(action: &str, fields: &[(&str, &str)]) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let inputs: String = fields
            .iter()
            .map(|(n, v)| format!("<input type=\"hidden\" name=\"{n}\" value=\"{v}\">"))
            .collect();
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><title>Another site</title></head><body>\
             <form method=\"post\" action=\"{action}\">{inputs}\
             <button id=\"go\" type=\"submit\">Win a prize</button></form></body></html>"
        );
        let answer = Arc::new(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        ));
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(Self {
            url: format!("http://{addr}/"),
            server,
        })
    }
}

impl Drop for OtherSite {
    fn drop(&mut self) {
        self.server.abort();
    }
}
