//! A PostgreSQL server of a test's own: `initdb` in a temporary folder, listening on
//! 127.0.0.1 at a port of its own and on a Unix socket in that folder, stopped when
//! dropped. Its programs run as the `postgres` user when the tests run as root (initdb
//! refuses root).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The PostgreSQL programs: `TRM_TEST_PG_BINDIR`, else the newest /usr/lib/postgresql/*/bin.
fn bindir() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("TRM_TEST_PG_BINDIR") {
        return Ok(d.into());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        anyhow::anyhow!("no initdb under /usr/lib/postgresql/*/bin: set TRM_TEST_PG_BINDIR")
    })
}

fn running_as_root() -> anyhow::Result<bool> {
    Ok(Command::new("id").arg("-u").output()?.stdout == b"0\n")
}

/// A command of the server's programs, as the `postgres` user when this runs as root.
fn pg(bin: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = if running_as_root()? {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    };
    let out = cmd.args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// What a test asks of its server besides the defaults.
#[derive(Default)]
pub struct Setup<'a> {
    /// Server settings, `name=value` (as `postgres -c`).
    pub settings: &'a [&'a str],
    /// TLS: the server's certificate and key (PEM); `ssl = on` with them.
    pub tls: Option<&'a trm_crypto::pki::CertifiedKey>,
    /// The whole of `pg_hba.conf`, instead of initdb's (trust for every local connection).
    pub hba: Option<&'a str>,
}

pub struct Server {
    bin: PathBuf,
    /// The data folder (its files, the WAL).
    pub data: String,
    /// The folder of the server's Unix socket.
    pub socket_dir: PathBuf,
    pub port: u16,
    options: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Creates a database cluster and starts its server on `port`.
    pub fn start_new(port: u16, setup: Setup<'_>) -> anyhow::Result<Self> {
        let bin = bindir()?;
        let dir = tempfile::tempdir()?;
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        for s in setup.settings {
            options.push_str(&format!(" -c {s}"));
        }
        if let Some(tls) = setup.tls {
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert, &tls.cert_pem)?;
            trm_crypto::files::write_secret(&key, tls.key_pem.as_bytes())?;
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        if let Some(hba) = setup.hba {
            let file = dir.path().join("pg_hba.conf");
            std::fs::write(&file, hba)?;
            options.push_str(&format!(" -c hba_file={}", file.display()));
        }
        if running_as_root()? {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(status.success(), "chown to postgres");
        }
        let data = dir.path().join("pg").display().to_string();
        pg(
            &bin,
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "-N"],
        )?;
        let server = Self {
            bin,
            data,
            socket_dir: dir.path().to_path_buf(),
            port,
            options,
            _dir: dir,
        };
        server.start()?;
        Ok(server)
    }

    /// Starts the server (again), waiting until it takes connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let log = format!("{}/log", self.data);
        pg(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &self.data,
                "-o",
                &self.options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
    }

    /// A crash: no shutdown checkpoint; the next start recovers from the WAL.
    pub fn crash(&self) -> anyhow::Result<()> {
        pg(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data, "-m", "immediate", "-w", "stop"],
        )
    }

    /// A connection as `postgres` over the Unix socket (no TLS, whatever the server asks
    /// of TCP connections), on a thread of its own: the caller may be on a runtime.
    pub fn local_sql<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> anyhow::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let conninfo = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        );
        std::thread::spawn(move || f(&mut postgres::Client::connect(&conninfo, postgres::NoTls)?))
            .join()
            .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = pg(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data, "-m", "fast", "-w", "stop"],
        );
    }
}

/// A port of 127.0.0.1 free at the moment.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
