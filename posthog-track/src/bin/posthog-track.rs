//! `posthog-track`: run a relay, or inspect and repair an outbox, from the command line.
//!
//! ```text
//! posthog-track relay --database-url postgres://...      # deliver until Ctrl-C / SIGTERM
//! posthog-track relay --database-url ... --metrics-addr 127.0.0.1:9464 --log-format json
//! posthog-track relay --drain --timeout 60 --database-url ...
//! posthog-track doctor --database-url postgres://... [--json]
//! posthog-track outbox migrate --database-url postgres://...
//! posthog-track outbox status --database-url sqlite:app.db
//! posthog-track outbox requeue --database-url mysql://... [--id 42 ...]
//! posthog-track outbox purge --database-url mysql://... [--older-than 7d]
//! posthog-track plan show [--plan tracking-plan.json] [--markdown]
//! posthog-track plan push --project-id 12345 [--plan tracking-plan.json] [--dry-run]
//! ```
//!
//! PostHog settings come from the environment (`POSTHOG_API_KEY`, `POSTHOG_HOST`, and for
//! `plan push` `POSTHOG_PERSONAL_API_KEY`). Several relays can run against one database at
//! once: that is how delivery scales out.

#[path = "posthog-track/serve.rs"]
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use posthog_track::doctor::{DoctorOptions, diagnose};
use posthog_track::plan::{PlanPush, PushOptions, TrackingPlan};
use posthog_track::{Backend, Config, Error, Tracker};
use sqlx::Pool;

/// `print!` to stdout, except that a reader that went away (`posthog-track outbox status |
/// head -1`) is no error: `print!` and `println!` panic on the broken pipe, and the command
/// printed a panic message and backtrace into the operator's terminal and exited 101. What a
/// gone reader would have read is dropped; another write error is said on stderr.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))
    };
}

/// `println!` to stdout, as [`out!`] does.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush())
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not write to stdout: {error}"
        );
    }
}

/// What can stop a command: the library's errors, and the metrics endpoint's.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Track(#[from] Error),
    #[error("cannot serve metrics on --metrics-addr {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "stopped at once by a second signal, before delivering what is claimable: nothing is \
         lost, undelivered events wait in the outbox for the next relay"
    )]
    Interrupted,
    #[error(
        "the relay stopped by itself (its task panicked: see the log above), so nothing \
         delivers from this command; exiting so that a supervisor restarts it. Nothing is lost: \
         undelivered events wait in the outbox (what the relay held returns when its lease runs \
         out)"
    )]
    RelayStopped,
    #[error("no dead event has {}: nothing was requeued", id_list(.0))]
    NotDead(Vec<i64>),
    #[error(
        "requeued {requeued} of {asked} dead event(s): the others were requeued or purged by \
         someone else meanwhile"
    )]
    RequeuedFewer { requeued: u64, asked: usize },
    #[error("cannot install the Prometheus recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

#[derive(Parser)]
#[command(
    name = "posthog-track",
    version,
    about = "Deliver and inspect the posthog-track outbox; show and push the tracking plan"
)]
struct Cli {
    /// Log lines as plain text, or as one JSON object per line (for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Deliver the outbox to PostHog until interrupted.
    Relay {
        /// postgres://, mysql:// or sqlite: URL of the database that holds posthog_outbox.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Deliver what the outbox holds now, then stop, instead of running forever. Exits
        /// non-zero when events are left undelivered.
        #[arg(long)]
        drain: bool,
        /// With --drain: how long to keep retrying, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Seconds a claim on outbox rows lasts (renewed while a send is in flight); a relay
        /// that dies holding one loses it after this long (taken as at least 0.25 s and at
        /// most a day).
        #[arg(long, default_value_t = 60)]
        lease: u64,
        /// Events per request.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Milliseconds a busy relay waits before its next claim so that the batch can fill;
        /// a lone event after a quiet spell still leaves at once.
        #[arg(long, default_value_t = 80)]
        linger_ms: u64,
        /// Milliseconds between polls of an idle relay (at least 10), instead of the adaptive
        /// default (50 ms growing to 2 s). On PostgreSQL, commits of processes that run no relay
        /// wake it at once (LISTEN/NOTIFY), whatever this says.
        #[arg(long)]
        poll_interval_ms: Option<u64>,
        /// PostgreSQL: write a lease into the claimed rows (as on MySQL/MariaDB and SQLite)
        /// instead of holding each claim in the transaction that sends it.
        #[arg(long)]
        written_leases: bool,
        /// Serve Prometheus metrics at /metrics and health at /healthz on this address, e.g.
        /// 127.0.0.1:9464 (port 0 picks a free one; the address is logged).
        #[arg(long, value_parser = parse_listen_address)]
        metrics_addr: Option<SocketAddr>,
        /// /healthz is unhealthy when the oldest pending event is older than this: `90s`,
        /// `5m`, `1h`.
        #[arg(long, value_parser = parse_age, default_value = "5m")]
        max_lag: Duration,
        /// After SIGTERM or Ctrl-C: how long to go on delivering what is claimable, in seconds,
        /// before stopping (what is left waits in the outbox).
        #[arg(long, default_value_t = 10)]
        shutdown_timeout: u64,
    },
    /// Check the set-up (keys, host, database, outbox) and say what to fix; exits non-zero
    /// when something would lose or hold back events.
    Doctor(DoctorArgs),
    /// Inspect or repair the outbox.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Show the tracking plan, or push its descriptions and property types to PostHog.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
}

// One struct, so that `run` (which answers `doctor` before connecting) and `execute` pass the
// options on whole.
#[derive(clap::Args)]
struct DoctorArgs {
    /// postgres://, mysql:// or sqlite: URL of the database that holds posthog_outbox.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// A pending event older than this fails the check: `90s`, `5m`, `1h`.
    #[arg(long, value_parser = parse_age, default_value = "5m")]
    max_lag: Duration,
    /// Seconds each request and the database connection may take.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Print the checked-in plan (the file `plan::assert_snapshot` writes).
    Show {
        /// The plan file.
        #[arg(long, default_value = "tracking-plan.json")]
        plan: PathBuf,
        /// Print Markdown instead of JSON.
        #[arg(long)]
        markdown: bool,
    },
    /// Update PostHog's event and property definitions (descriptions, property types) to
    /// match the plan, with the personal API key in POSTHOG_PERSONAL_API_KEY.
    Push {
        /// The plan file.
        #[arg(long, default_value = "tracking-plan.json")]
        plan: PathBuf,
        /// The PostHog project's id (Settings > Project).
        #[arg(long, env = "POSTHOG_PROJECT_ID")]
        project_id: u64,
        /// PostHog's host; ingestion hosts (us.i.posthog.com) map to the app (us.posthog.com).
        #[arg(
            long,
            env = "POSTHOG_HOST",
            hide_env_values = true,
            default_value = "https://us.posthog.com"
        )]
        host: String,
        /// List the changes without making them.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Create the outbox tables, or upgrade them in place to this version's schema
    /// (versioned, idempotent, safe when several instances run it at once).
    Migrate {
        /// postgres://, mysql:// or sqlite: URL of the database that holds posthog_outbox.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// What waits, what is in flight, what was rejected for good (and why), and the lag.
    Status {
        /// postgres://, mysql:// or sqlite: URL of the database that holds posthog_outbox.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Delete dead-lettered events for good (all, or those dead for longer than --older-than).
    Purge {
        /// postgres://, mysql:// or sqlite: URL of the database that holds posthog_outbox.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Only events dead for longer than this: `90s`, `30m`, `24h`, `7d`.
        #[arg(long, value_parser = parse_age)]
        older_than: Option<Duration>,
    },
    /// Put dead-lettered events back in line (all of them, or those given with --id).
    Requeue {
        /// postgres://, mysql:// or sqlite: URL of the database that holds posthog_outbox.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// A dead event's id (the posthog_outbox_dead table's `id`) to requeue; repeat it for
        /// several. Without it every dead event is requeued.
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Debug builds only: the test that a relay task which panics stops the `relay` command
    // (tests/faults.rs). Read here, not by the library, so that the variable cannot panic the
    // relay of an application's debug build.
    #[cfg(debug_assertions)]
    if std::env::var_os("POSTHOG_TRACK_TEST_RELAY_PANIC").is_some() {
        posthog_track::__cli::panic_relays_after_a_round();
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "posthog_track=info".into()),
        )
        .with_writer(std::io::stderr);
    JSON_LOGS.store(
        matches!(cli.log_format, LogFormat::Json),
        std::sync::atomic::Ordering::Relaxed,
    );
    match cli.log_format {
        // Plain text when the output is a file or a pipe (log collectors, CI).
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            if json_logs() {
                match hint(&error) {
                    Some(hint) => tracing::error!(hint, "{error}"),
                    None => tracing::error!("{error}"),
                }
            } else {
                eprintln!("error: {error}");
                if let Some(hint) = hint(&error) {
                    eprintln!("hint: {hint}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the logs are JSON (`--log-format json`): then every line on stderr is one.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A line for the operator on stderr: plain text, or a log line when the logs are JSON (a
/// collector reads every line as an object).
/// A warning for the operator: on stderr, or as a `warn` log line with `--log-format json`.
fn warn(line: std::fmt::Arguments<'_>) {
    if json_logs() {
        tracing::warn!("{line}");
    } else {
        eprintln!("warning: {line}");
    }
}

fn say(line: std::fmt::Arguments<'_>) {
    if json_logs() {
        tracing::info!("{line}");
    } else {
        eprintln!("{line}");
    }
}

/// What to do about `error` from the command line, where the library's advice (calls in the
/// application) is not what an operator types.
fn hint(error: &CliError) -> Option<&'static str> {
    match error {
        CliError::Track(Error::Database(sqlx::Error::Configuration(_))) => Some(
            "--database-url could not be read; a password holding `?`, `/`, `#`, `@` or `%` \
             must be percent-encoded (`%3F`, `%2F`, `%23`, `%40`, `%25`)",
        ),
        CliError::Track(Error::Database(sqlx::Error::Io(_))) => Some(
            "check the host and port in --database-url, and that the database server runs and \
             accepts connections from this machine",
        ),
        CliError::Track(Error::Database(sqlx::Error::Tls(_))) => Some(
            "the TLS handshake with the database failed: check the sslmode (PostgreSQL) or \
             ssl-mode (MySQL) in --database-url against what the server offers, and its \
             certificate",
        ),
        // SQLSTATE class 28, invalid authorization: the hint `doctor` gives too.
        CliError::Track(Error::Database(error))
            if posthog_track::__cli::refused_login_hint(error).is_some() =>
        {
            posthog_track::__cli::refused_login_hint(error)
        }
        // SQLITE_CANTOPEN: the file (or its folder) is missing or not readable.
        CliError::Track(Error::Database(sqlx::Error::Database(error)))
            if error.code().as_deref() == Some("14") =>
        {
            Some(
                "check the SQLite file's path in --database-url (`sqlite:/abs/path.db` or \
                 `sqlite:relative.db`) and its permissions; the command never creates a database \
                 (add `?mode=rwc` to create an empty one)",
            )
        }
        CliError::NotDead(_) => Some(
            "`posthog-track outbox status` counts the dead events and their reasons; their ids \
             are those of the posthog_outbox_dead table (`SELECT id, event, last_error FROM \
             posthog_outbox_dead`); without --id every dead event is requeued",
        ),
        CliError::Track(Error::OutboxMissing { .. }) => Some(
            "create it with `posthog-track outbox migrate --database-url <the same URL>` (or \
             with your application's migrations)",
        ),
        CliError::Track(Error::CannotDeliver { mode }) => Some(match mode {
            posthog_track::Mode::Disabled => "unset POSTHOG_DISABLED in this command's environment",
            _ => {
                "set POSTHOG_API_KEY (the project API key, phc_...) in this command's \
                 environment, and POSTHOG_HOST unless the project is on PostHog's US cloud"
            }
        }),
        CliError::Track(Error::ReadPlan { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Some(
                "the plan file is written by the test that calls \
                 `posthog_track::plan::assert_snapshot`: run `POSTHOG_TRACK_UPDATE_PLAN=1 cargo \
                 test` in the application, or give its path with --plan",
            )
        }
        _ => None,
    }
}

/// Prints the diagnosis; returns whether the set-up is healthy.
async fn doctor(args: &DoctorArgs) -> Result<bool, CliError> {
    let config = Config::from_env()?;
    let mut options = DoctorOptions::new()
        .max_lag(args.max_lag)
        .timeout(Duration::from_secs(args.timeout.max(1)));
    if let Some(url) = &args.database_url {
        options = options.database_url(url);
    }
    let diagnosis = diagnose(&config, &options).await;
    if args.json {
        outln!("{}", diagnosis.to_json());
    } else {
        out!("{diagnosis}");
    }
    Ok(diagnosis.healthy())
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let url = match &cli.command {
        Command::Plan { command } => return Ok(plan(command).await.map(|()| ExitCode::SUCCESS)?),
        Command::Doctor(args) => {
            let healthy = doctor(args).await?;
            return Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Relay { database_url, .. } => database_url,
        Command::Outbox {
            command: OutboxCommand::Migrate { database_url },
        } => database_url,
        Command::Outbox {
            command: OutboxCommand::Status { database_url },
        } => database_url,
        Command::Outbox {
            command: OutboxCommand::Requeue { database_url, .. },
        } => database_url,
        Command::Outbox {
            command: OutboxCommand::Purge { database_url, .. },
        } => database_url,
    }
    .clone();
    let mut builder = Tracker::builder().config(Config::from_env()?);
    if let Command::Relay {
        lease,
        batch_size,
        metrics_addr,
        linger_ms,
        poll_interval_ms,
        written_leases,
        ..
    } = &cli.command
    {
        builder = builder
            .lease(Duration::from_secs(*lease))
            .batch_size(*batch_size)
            .linger(Duration::from_millis(*linger_ms))
            .held_claims(!*written_leases);
        if let Some(poll) = poll_interval_ms {
            let poll = Duration::from_millis(*poll);
            builder = builder.poll_interval(poll, poll);
        }
        if metrics_addr.is_some() {
            builder = builder.outbox_metrics_interval(serve::OUTBOX_SAMPLE_INTERVAL);
        }
    }
    let tracker = builder.build();
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        connect_and_execute::<sqlx::Postgres>(&tracker, &url, cli.command).await
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        connect_and_execute::<sqlx::MySql>(&tracker, &url, cli.command).await
    } else if url.starts_with("sqlite:") {
        connect_and_execute::<sqlx::Sqlite>(&tracker, &url, cli.command).await
    } else {
        Err(posthog_track::Error::Config(
            "--database-url must start with postgres://, mysql:// or sqlite:".to_owned(),
        )
        .into())
    }
}

/// How long the first connection to --database-url may take (sqlx's pool waits as long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a pool on `url` for the database its scheme named, and runs `command` on it.
async fn connect_and_execute<DB: Backend>(
    tracker: &Tracker,
    url: &str,
    command: Command,
) -> Result<ExitCode, CliError> {
    // One connection first: its error says why (refused, unknown host, wrong password), where
    // a pool's says only that it timed out, after 30 s.
    let first = tokio::time::timeout(
        CONNECT_TIMEOUT,
        <DB::Connection as sqlx::Connection>::connect(url),
    )
    .await
    .map_err(|_| {
        Error::Config(format!(
            "the database in --database-url did not answer within {} s: check the host and \
             port, and that no firewall drops the connection",
            CONNECT_TIMEOUT.as_secs()
        ))
    })?
    .map_err(Error::from)?;
    let _ = sqlx::Connection::close(first).await;
    let pool = Pool::<DB>::connect(url).await.map_err(Error::from)?;
    execute(tracker, &pool, command).await?;
    Ok(ExitCode::SUCCESS)
}

async fn execute<DB: Backend>(
    tracker: &Tracker,
    pool: &Pool<DB>,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::Relay {
            drain: true,
            timeout,
            ..
        } => {
            let started = std::time::Instant::now();
            tracker
                .relay(pool.clone())
                .drain_for(Duration::from_secs(timeout))
                .await?;
            let pending = tracker.outbox(pool).status().await?.pending;
            outln!(
                "drained: {} event(s) delivered in {:.1?}; {pending} committed since wait in \
                 the outbox",
                tracker.stats().delivered,
                started.elapsed()
            );
            Ok(())
        }
        Command::Relay {
            drain: false,
            metrics_addr,
            max_lag,
            shutdown_timeout,
            ..
        } => {
            // Listening from the start: a second signal sent while the first is handled (or
            // with it) must not be lost.
            let mut signals = StopSignals::listen();
            // The recorder first, for the relay's state gauges count from its start (and no
            // endpoint for a relay refused below).
            let live = matches!(tracker.mode(), posthog_track::Mode::Live);
            if let Some(addr) = metrics_addr.filter(|_| live) {
                let health = serve::Health::new(tracker.clone(), pool.clone(), max_lag);
                let bound = serve::start(addr, health).await?;
                // Once: a plain line, or with JSON logs a log line with the address as a field.
                if json_logs() {
                    tracing::info!(%bound, "serving /metrics and /healthz");
                } else {
                    eprintln!("serving /metrics and /healthz on http://{bound}");
                }
            }
            // Refuses without an API key: a relay that cannot deliver must not take other
            // processes' events out of the outbox.
            tracker.start_relay(pool.clone())?;
            say(format_args!(
                "relaying {} to {} (Ctrl-C or SIGTERM to stop)",
                posthog_track::outbox::TABLE,
                tracker.config().redacted_host()
            ));
            // A relay may start before the application created the outbox (replicas starting
            // at once): it keeps running and delivers once the table exists, and says once, in
            // this command's terms, what its rounds' errors are about.
            if tracker.outbox(pool).columns().await?.is_empty() {
                warn(format_args!(
                    "{} does not exist in this database yet; the relay waits for it. \
                     Create it with `posthog-track outbox migrate --database-url <the same \
                     URL>` (or with your application's migrations)",
                    posthog_track::outbox::TABLE,
                ));
            }
            // A relay task that dies (a panic) must not leave the command running, healthy in
            // a supervisor's eyes, with nobody delivering.
            tokio::select! {
                () = signals.next() => {}
                () = relay_ended(tracker) => return Err(CliError::RelayStopped),
            }
            say(format_args!(
                "stopping: delivering what is claimable ({shutdown_timeout} s at most; Ctrl-C \
                 or SIGTERM again to stop at once)"
            ));
            // A second signal stops at once: nothing is lost, what this relay held returns to
            // the outbox (with its connection, or when its lease runs out).
            let shutdown = tokio::select! {
                shutdown = tracker.shutdown(Duration::from_secs(shutdown_timeout)) => shutdown,
                () = signals.next() => {
                    return Err(CliError::Interrupted);
                }
            };
            // What waits in the outbox is said by the shutdown itself, once: its info log line
            // counts it ("posthog-track stopped; 3 event(s) wait in the outbox ..."), with the
            // count as a field in JSON logs.
            match shutdown {
                Ok(_) => Ok(()),
                // A clean stop all the same: what was not delivered waits in the outbox.
                Err(error @ (Error::Timeout { .. } | Error::Undelivered { .. })) => {
                    say(format_args!(
                        "stopped before everything was delivered: {error}"
                    ));
                    Ok(())
                }
                Err(error) => Err(error.into()),
            }
        }
        Command::Outbox {
            command: OutboxCommand::Migrate { .. },
        } => {
            tracker.migrate(pool).await?;
            let version = tracker.outbox(pool).schema_version().await?;
            outln!(
                "outbox schema version {} (this version's: {})",
                version.map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
                posthog_track::outbox::SCHEMA_VERSION
            );
            Ok(())
        }
        Command::Outbox {
            command: OutboxCommand::Status { .. },
        } => {
            let status = tracker.outbox(pool).status().await?;
            outln!("pending: {}", status.pending);
            outln!("  leased (in flight): {}", status.leased);
            outln!("  backing off after a failure: {}", status.backing_off);
            match status.oldest_pending_age {
                Some(age) => outln!("oldest pending: {} s ago", age.as_secs()),
                None => outln!("oldest pending: none"),
            }
            outln!("dead: {}", status.dead);
            for (reason, count) in &status.dead_reasons {
                outln!("  {count} x {reason}");
            }
            Ok(())
        }
        Command::Outbox {
            command: OutboxCommand::Purge { older_than, .. },
        } => {
            let purged = tracker.outbox(pool).purge(older_than).await?;
            outln!("purged: {purged}");
            Ok(())
        }
        Command::Outbox {
            command: OutboxCommand::Requeue { ids, .. },
        } => {
            let outbox = tracker.outbox(pool);
            if ids.is_empty() {
                let requeued = outbox.requeue(None).await?;
                outln!("requeued: {requeued}");
                return Ok(());
            }
            // A mistyped id must be told, not requeue nothing in silence; and none is requeued
            // then, so that the corrected command does what was meant.
            let missing = outbox.missing_dead(&ids).await?;
            if !missing.is_empty() {
                return Err(CliError::NotDead(missing));
            }
            let asked = ids.iter().collect::<std::collections::HashSet<_>>().len();
            let requeued = outbox.requeue(Some(&ids)).await?;
            outln!("requeued: {requeued}");
            if requeued < asked as u64 {
                return Err(CliError::RequeuedFewer { requeued, asked });
            }
            Ok(())
        }
        Command::Plan { command } => Ok(plan(&command).await?),
        Command::Doctor(args) => {
            // `run` handles it before connecting; kept here so every command has one meaning.
            if !doctor(&args).await? {
                return Err(Error::Config("the set-up is not healthy".to_owned()).into());
            }
            Ok(())
        }
    }
}

/// `id 7`, `id 7 or 9`, `id 7, 8 or 9`.
fn id_list(ids: &[i64]) -> String {
    let mut text = "id ".to_owned();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            text.push_str(if i + 1 == ids.len() { " or " } else { ", " });
        }
        text.push_str(&id.to_string());
    }
    text
}

/// Returns when the tracker's background relay has ended by itself (its task panicked).
async fn relay_ended(tracker: &Tracker) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tracker.relay_state() == Some(posthog_track::relay::RelayState::Stopped) {
            return;
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM (what container runtimes send), listened to for as long as
/// this lives. tokio passes a signal only to the listeners that exist when it comes, so
/// listening anew after each one (as this command did) lost a second signal sent with the
/// first, or just after it: the command then ran on for its whole `--shutdown-timeout`.
struct StopSignals {
    #[cfg(unix)]
    listeners: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Without listeners (a platform that refuses them), `next` falls back to ctrl_c.
            let listeners = signal(SignalKind::interrupt())
                .and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)))
                .ok();
            StopSignals { listeners }
        }
        #[cfg(not(unix))]
        {
            StopSignals {}
        }
    }

    /// Returns at the next signal, or at once for one that came since the last call.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((interrupt, terminate)) = &mut self.listeners {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// An IP address and a port to listen on. A host name (`localhost:9464`) is refused with what
/// to give instead: the address is bound as given, never resolved.
fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "`{text}` is not an IP address and a port: give one such as 127.0.0.1:9464 (this \
             machine only), 0.0.0.0:9464 (every interface) or [::1]:9464"
        )
    })
}

/// `90s`, `30m`, `24h`, `7d`, or plain seconds.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not an age like 90s, 30m, 24h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

fn read_plan(path: &PathBuf) -> posthog_track::Result<TrackingPlan> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadPlan {
        path: path.clone(),
        source,
    })?;
    TrackingPlan::from_json(&text).map_err(|source| Error::InvalidPlan {
        path: path.clone(),
        source,
    })
}

async fn plan(command: &PlanCommand) -> posthog_track::Result<()> {
    match command {
        PlanCommand::Show { plan, markdown } => {
            let plan = read_plan(plan)?;
            if *markdown {
                out!("{}", plan.to_markdown());
            } else {
                out!("{}", plan.to_json());
            }
            Ok(())
        }
        PlanCommand::Push {
            plan,
            project_id,
            host,
            dry_run,
        } => {
            let plan = read_plan(plan)?;
            // From the environment like every key, not through clap, so `--help` can never
            // print it.
            let key = Config::from_env()?
                .personal_api_key()
                .cloned()
                .ok_or(Error::MissingKey {
                    key: "POSTHOG_PERSONAL_API_KEY",
                    purpose: "plan push needs a personal API key with the event_definition \
                              and property_definition read and write scopes",
                })?;
            let push = PlanPush::new(PushOptions::new(host, *project_id, key)?);
            let changes = push.plan_changes(&plan).await?;
            for change in &changes {
                outln!("{change}");
            }
            let patches = changes.iter().filter(|c| c.is_patch()).count();
            let unseen = changes.len() - patches;
            if *dry_run {
                outln!(
                    "dry run: {patches} definition(s) to update, {unseen} not yet seen by PostHog"
                );
                return Ok(());
            }
            let applied = push.apply(&changes).await?;
            outln!(
                "updated {applied} definition(s) in project {project_id} on {}; {unseen} not yet seen by PostHog",
                push.options().redacted_host()
            );
            Ok(())
        }
    }
}
