use clap::Parser;

fn main() {
    let cli = ferry::cli::Cli::parse();
    ferry::logging::init();
    let code = match ferry::cli::run(cli) {
        Ok(c) => c,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                0
            } else {
                eprintln!("ferry: error: {e:#}");
                1
            }
        }
    };
    std::process::exit(code);
}
