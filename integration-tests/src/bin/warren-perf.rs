//! `warren-perf`: load an AMQP 0-9-1 broker (Warren or RabbitMQ), report publish and
//! consume rates, end-to-end latency and the tool's own CPU, and verify that every
//! message was consumed exactly once; or (`--connections N`) open N consuming
//! connections and report how long that took; or (`groups`) run the consumer-group
//! churn benchmark; or (`group-join`) measure what a rebalance costs the partitions
//! it does not move. Exit status: 0 verified, 1 verification failed (or not every
//! connection opened), 2 the run could not be carried out.

use std::process::ExitCode;

use clap::Parser;
use integration_tests::perf::{self, Command, Options, group_join, group_member, groups};

fn main() -> ExitCode {
    let opts = Options::parse();
    match &opts.command {
        Some(Command::Groups(groups_opts)) => return groups_main(groups_opts),
        Some(Command::GroupMember(member_opts)) => {
            return match group_member::run(member_opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("warren-perf group-member {}: error: {e:#}", member_opts.id);
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::GroupJoin(join_opts)) => {
            return match group_join::run(join_opts) {
                Ok(report) => {
                    print!("{}", report.to_text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("warren-perf group-join: error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        None => {}
    }
    let report = match perf::run(&opts) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("warren-perf: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if opts.json {
        match report.to_json() {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("warren-perf: error: encoding JSON: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `warren-perf groups`: the table on stdout, the JSON summary where `--json` says.
fn groups_main(opts: &groups::GroupsOptions) -> ExitCode {
    let report = match groups::run(opts) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("warren-perf groups: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", groups::to_text(&report));
    if let Some(path) = &opts.json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(anyhow::Error::from)
            .and_then(|json| std::fs::write(path, json + "\n").map_err(Into::into));
        if let Err(e) = written {
            eprintln!(
                "warren-perf groups: error: writing {}: {e:#}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
