//! The `skrr-onnx` binary: parse the command line, run the library, turn errors into one line on
//! stderr and a documented exit code (src/error.rs).

use skrr_onnx::cli::Cli;

fn main() {
    let cli = Cli::parse_checked();
    env_logger::Builder::new()
        .filter_level(cli.global.log_level())
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    skrr_onnx::interrupt::install();
    let ctx = cli.global.context();
    let result = match &cli.command {
        Some(command) => command.run(&ctx),
        None => skrr_onnx::commands::run::run(&cli.run, &ctx),
    };
    if let Err(err) = result {
        // A reader that stopped early (`| head`) is not a failure.
        if skrr_onnx::report::is_broken_pipe(&err) {
            std::process::exit(0);
        }
        // One line: the context chain joined with ": " (embedded newlines from ONNX Runtime
        // messages folded), so logs and scripts can grep it.
        let msg = format!("{err:#}").replace(['\n', '\r'], " ");
        eprintln!("error: {msg}");
        std::process::exit(skrr_onnx::error::exit_code_of(&err));
    }
}
