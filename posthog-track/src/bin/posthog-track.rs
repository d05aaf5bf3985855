//! `posthog-track`: run a relay, or inspect and repair an outbox, from the command line.
//!
//! ```text
//! posthog-track relay --database-url postgres://...      # deliver until Ctrl-C
//! posthog-track outbox status --database-url sqlite:app.db
//! posthog-track outbox requeue --database-url mysql://... [--id 42 ...]
//! posthog-track plan show [--plan tracking-plan.json] [--markdown]
//! posthog-track plan push --project-id 12345 [--plan tracking-plan.json] [--dry-run]
//! ```
//!
//! PostHog settings come from the environment (`POSTHOG_API_KEY`, `POSTHOG_HOST`, and for
//! `plan push` `POSTHOG_PERSONAL_API_KEY`). Several relays can run against one database at
//! once: that is how delivery scales out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use posthog_track::plan::{PlanPush, PushOptions, TrackingPlan};
use posthog_track::{Backend, Config, Error, Tracker};
use sqlx::Pool;

#[derive(Parser)]
#[command(
    name = "posthog-track",
    version,
    about = "Deliver and inspect the posthog-track outbox; show and push the tracking plan"
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
    /// Show the tracking plan, or push its descriptions and property types to PostHog.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
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
        #[arg(long, env = "POSTHOG_HOST", default_value = "https://us.posthog.com")]
        host: String,
        /// List the changes without making them.
        #[arg(long)]
        dry_run: bool,
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
    let url = match &cli.command {
        Command::Plan { command } => return plan(command).await,
        Command::Relay { database_url, .. } => database_url,
        Command::Outbox {
            command: OutboxCommand::Status { database_url },
        } => database_url,
        Command::Outbox {
            command: OutboxCommand::Requeue { database_url, .. },
        } => database_url,
    }
    .clone();
    let tracker = Tracker::from_env()?;
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
        Command::Plan { command } => plan(&command).await,
    }
}

fn read_plan(path: &PathBuf) -> posthog_track::Result<TrackingPlan> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Error::Config(format!("cannot read {}: {error}", path.display())))?;
    TrackingPlan::from_json(&text).map_err(|error| {
        Error::Config(format!(
            "{} is not a tracking plan: {error}",
            path.display()
        ))
    })
}

async fn plan(command: &PlanCommand) -> posthog_track::Result<()> {
    match command {
        PlanCommand::Show { plan, markdown } => {
            let plan = read_plan(plan)?;
            if *markdown {
                print!("{}", plan.to_markdown());
            } else {
                print!("{}", plan.to_json());
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
                .ok_or_else(|| {
                    Error::Config(
                        "plan push needs POSTHOG_PERSONAL_API_KEY: a personal API key with the \
                         event_definition and property_definition read and write scopes"
                            .to_owned(),
                    )
                })?;
            let push = PlanPush::new(PushOptions::new(host, *project_id, key)?);
            let changes = push.plan_changes(&plan).await?;
            for change in &changes {
                println!("{change}");
            }
            let patches = changes.iter().filter(|c| c.is_patch()).count();
            let unseen = changes.len() - patches;
            if *dry_run {
                println!(
                    "dry run: {patches} definition(s) to update, {unseen} not yet seen by PostHog"
                );
                return Ok(());
            }
            let applied = push.apply(&changes).await?;
            println!(
                "updated {applied} definition(s) in project {project_id} on {}; {unseen} not yet seen by PostHog",
                push.options().host()
            );
            Ok(())
        }
    }
}
