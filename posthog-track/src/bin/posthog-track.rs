//! `posthog-track`: run a relay, or inspect and repair an outbox, from the command line.
//!
//! ```text
//! posthog-track relay --database-url postgres://...      # deliver until Ctrl-C
//! posthog-track outbox status --database-url sqlite:app.db
//! posthog-track outbox requeue --database-url mysql://... [--id 42 ...]
//! ```
//!
//! PostHog settings come from the environment (`POSTHOG_API_KEY`, `POSTHOG_HOST`). Several
//! relays can run against one database at once: that is how delivery scales out.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use posthog_track::{Backend, Tracker};
use sqlx::Pool;

#[derive(Parser)]
#[command(
    name = "posthog-track",
    version,
    about = "Deliver and inspect the posthog-track outbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deliver the outbox to PostHog until interrupted.
    Relay {
        /// postgres://, mysql:// or sqlite: URL of the database that holds posthog_outbox.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Stop once the outbox has nothing deliverable left, instead of running forever.
        #[arg(long)]
        drain: bool,
    },
    /// Inspect or repair the outbox.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// How many events wait and how many were rejected for good.
    Status {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Put dead-lettered events back in line (all of them, or those given with --id).
    Requeue {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "posthog_track=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> posthog_track::Result<()> {
    let tracker = Tracker::from_env()?;
    let url = match &cli.command {
        Command::Relay { database_url, .. } => database_url,
        Command::Outbox {
            command: OutboxCommand::Status { database_url },
        } => database_url,
        Command::Outbox {
            command: OutboxCommand::Requeue { database_url, .. },
        } => database_url,
    }
    .clone();
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        execute(&tracker, &sqlx::PgPool::connect(&url).await?, cli.command).await
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        execute(
            &tracker,
            &sqlx::MySqlPool::connect(&url).await?,
            cli.command,
        )
        .await
    } else if url.starts_with("sqlite:") {
        execute(
            &tracker,
            &sqlx::SqlitePool::connect(&url).await?,
            cli.command,
        )
        .await
    } else {
        Err(posthog_track::Error::Config(
            "--database-url must start with postgres://, mysql:// or sqlite:".to_owned(),
        ))
    }
}

async fn execute<DB: Backend>(
    tracker: &Tracker,
    pool: &Pool<DB>,
    command: Command,
) -> posthog_track::Result<()> {
    match command {
        Command::Relay { drain: true, .. } => tracker.relay(pool.clone()).drain().await,
        Command::Relay { drain: false, .. } => {
            eprintln!(
                "relaying {} to {} (Ctrl-C to stop)",
                posthog_track::outbox::TABLE,
                tracker.config().host()
            );
            tracker.start_relay(pool.clone());
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping: delivering what is claimable (10 s at most)");
            tracker.shutdown(Duration::from_secs(10)).await
        }
        Command::Outbox {
            command: OutboxCommand::Status { .. },
        } => {
            let status = tracker.outbox(pool).status().await?;
            println!("pending: {}\ndead: {}", status.pending, status.dead);
            Ok(())
        }
        Command::Outbox {
            command: OutboxCommand::Requeue { ids, .. },
        } => {
            let ids = (!ids.is_empty()).then_some(ids.as_slice());
            let requeued = tracker.outbox(pool).requeue(ids).await?;
            println!("requeued: {requeued}");
            Ok(())
        }
    }
}
