//! `ifs-guide serve`: the whole service on a laptop, in one process; `ifs-guide create-table`:
//! the DynamoDB table it needs with `STORE=dynamodb`; `ifs-guide check`: every dialogue audited.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use ifs_guide::{Cli, Command};

/// How long blocking work (a generation, a hash) may hold up the exit once serving has stopped.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let _logs = ifs_api::lambda::init_tracing();
    let command = Cli::parse().command;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ifs-guide: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match command {
            Command::Serve(args) => serve(*args).await,
            Command::CreateTable(table) => match ifs_guide::create_table(&table).await {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("ifs-guide: {error:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Check(args) => check(&args).await,
            Command::SafetyReport(args) => safety_report(&args).await,
            Command::Openapi => {
                println!("{}", ifs_guide::openapi::json(true));
                ExitCode::SUCCESS
            }
            Command::WebExport { dir } => web_export(&dir),
        }
    });
    // Dropping a runtime waits for every blocking task; a generation in progress could hold the
    // exit for as long as it takes, past SHUTDOWN_TIMEOUT.
    runtime.shutdown_timeout(BLOCKING_GRACE);
    code
}

async fn serve(args: ifs_guide::ServeArgs) -> ExitCode {
    let app = match ifs_guide::build(&args).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("ifs-guide: {error:#}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.bind_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("ifs-guide: cannot listen on {} (BIND_ADDR): {error}", args.bind_addr);
            return ExitCode::from(2);
        }
    };
    let address = listener.local_addr().map_or_else(|_| args.bind_addr.to_string(), |a| a.to_string());
    // Plain stdout, not the log: this is for the person who typed the command (and for tests).
    println!("ifs-guide listening on http://{address}");
    for line in &app.backends {
        println!("  {line}");
    }
    println!("  page:   open http://{address}/ in a browser");
    match ifs_guide::serve(listener, app, ifs_api::http::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ifs-guide: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints each finding, one line per finding, then a summary line. Exit 0: every dialogue is a
/// valid list; 1: findings; 2: the store could not be read.
async fn check(args: &ifs_guide::CheckArgs) -> ExitCode {
    let ifs_guide::Checked { store, finished, report } = match ifs_guide::check(args).await {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("ifs-guide: {error:#}");
            return ExitCode::from(2);
        }
    };
    for (dialogue, findings) in &report.findings {
        for finding in findings {
            println!("dialogue {dialogue}: {finding}");
        }
    }
    for dialogue in &report.deleting {
        println!("dialogue {dialogue}: being deleted (hidden; --repair-deletions finishes it)");
    }
    let (dialogues, messages) = (report.dialogues, report.messages);
    let mut checked =
        format!("checked {}, {} in {store}", count(dialogues, "dialogue"), count(messages, "message"));
    if finished > 0 {
        checked += &format!(", after finishing {}", count(finished, "interrupted deletion"));
    }
    if !report.deleting.is_empty() {
        checked += &format!(", {} in progress", count(report.deleting.len() as u64, "deletion"));
    }
    if report.findings.is_empty() {
        println!("{checked}: no findings");
        ExitCode::SUCCESS
    } else {
        let findings = count(report.finding_count() as u64, "finding");
        println!("{checked}: {findings} in {}", count(report.findings.len() as u64, "dialogue"));
        ExitCode::FAILURE
    }
}

/// Prints the safety counters as a table, one row per day, level and screener, then the totals
/// by level; the same numbers are logged as `safety_screened` events when they are counted.
/// Exit 0, or 2 if the store could not be read.
async fn safety_report(args: &ifs_guide::SafetyReportArgs) -> ExitCode {
    let (store, since, counts) = match ifs_guide::safety_report(args).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("ifs-guide: {error:#}");
            return ExitCode::from(2);
        }
    };
    println!("safety screenings since {since} in {store} (no user, dialogue or text is counted)");
    println!("{:<10}  {:<8}  {:>8}  screener", "day", "level", "turns");
    let mut totals = std::collections::BTreeMap::new();
    for row in &counts {
        println!("{:<10}  {:<8}  {:>8}  {}", row.day, row.level.as_str(), row.count, row.screener);
        *totals.entry(row.level).or_insert(0) += row.count;
    }
    let totals: Vec<String> =
        ifs_domain::SafetyLevel::ALL.iter().map(|l| format!("{l} {}", totals.get(l).unwrap_or(&0))).collect();
    println!("total: {}", totals.join(", "));
    ExitCode::SUCCESS
}

fn count(n: u64, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

fn web_export(dir: &std::path::Path) -> ExitCode {
    for (path, content_type, cache, body) in ifs_guide::web::files() {
        let target = dir.join(&path);
        let written = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&target, body));
        if let Err(error) = written {
            eprintln!("ifs-guide: cannot write {}: {error}", target.display());
            return ExitCode::from(2);
        }
        println!("{path}\t{content_type}\t{cache}");
    }
    ExitCode::SUCCESS
}
