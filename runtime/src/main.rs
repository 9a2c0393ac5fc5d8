//! The `molt` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use molt_runtime::host::Host;
use molt_runtime::module::{Loader, ModuleSpec};

#[derive(Parser)]
#[command(
    name = "molt",
    version,
    about = "A shared-memory actor runtime whose handler modules are swapped while it serves"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a module the way the runtime does, send it one message, unload it,
    /// and report what happened (handshake, init, reply, unmap).
    Check {
        /// The module's shared library.
        module: PathBuf,
        /// Config entries for init, as key=value.
        #[arg(value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The message payload to send.
        #[arg(long, default_value = "molt check")]
        message: String,
        /// The message tag.
        #[arg(long, default_value_t = 1)]
        tag: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOLT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Check { module, config, message, tag } => check(module, config, message, tag),
    }
}

fn check(module: PathBuf, config: Vec<String>, message: String, tag: u64) -> ExitCode {
    let mut pairs = Vec::new();
    for c in config {
        match c.split_once('=') {
            Some((k, v)) => pairs.push((k.to_owned(), v.to_owned())),
            None => {
                eprintln!("molt check: config entry {c:?} is not KEY=VALUE");
                return ExitCode::from(2);
            }
        }
    }
    let run_dir = std::env::temp_dir().join(format!("molt-check-{}", std::process::id()));
    let loader = match Loader::new(Arc::new(Host::default()), &run_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("molt check: cannot create {}: {e}", run_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let spec = ModuleSpec { config: pairs, ..ModuleSpec::new(&module) };
    let code = match loader.load(&spec) {
        Err(e) => {
            eprintln!("refused: {e}");
            ExitCode::FAILURE
        }
        Ok(v) => {
            let m = v.meta();
            println!("module      {} {} (version number {})", m.name, m.version, m.version_number);
            println!("state       schema {}", m.state_schema);
            println!(
                "flags       {:#x}, required host caps {:#x}, module caps {:#x}",
                m.flags, m.required_host_caps, m.module_caps
            );
            let cb = &m.callbacks;
            println!(
                "callbacks   init handle_event{}{}{}{}",
                if cb.migrate.is_some() { " migrate" } else { "" },
                if cb.adopt.is_some() { " adopt" } else { "" },
                if cb.drain.is_some() { " drain" } else { "" },
                if cb.fini.is_some() { " fini" } else { "" },
            );
            let mut code = ExitCode::SUCCESS;
            match v.call_direct(tag, message.as_bytes()) {
                Ok(replies) if replies.is_empty() => println!("message     handled, no reply"),
                Ok(replies) => {
                    for r in replies {
                        println!("reply       tag {}: {}", r.tag, String::from_utf8_lossy(&r.data));
                    }
                }
                Err(e) => {
                    println!("message     failed: {e}");
                    code = ExitCode::FAILURE;
                }
            }
            let report = v.unload();
            match (&report.pinned, report.unmapped) {
                (None, true) => println!("unload      unmapped, runtime copy removed"),
                (Some(p), _) => println!("unload      PINNED: {p}"),
                (None, false) => println!("unload      still mapped"),
            }
            code
        }
    };
    let _ = std::fs::remove_dir_all(&run_dir);
    code
}
