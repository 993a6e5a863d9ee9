//! `warren-perf`: load an AMQP 0-9-1 broker (Warren or RabbitMQ), report publish and
//! consume rates, end-to-end latency and the tool's own CPU, and verify that every
//! message was consumed exactly once; or (`--connections N`) open N consuming
//! connections and report how long that took. Exit status: 0 verified, 1 verification
//! failed (or not every connection opened), 2 the run could not be carried out.

use std::process::ExitCode;

use clap::Parser;
use integration_tests::perf::{self, Options};

fn main() -> ExitCode {
    let opts = Options::parse();
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
