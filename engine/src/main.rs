fn main() -> std::process::ExitCode {
    ibex::cli::main()
}
