fn main() {
    eprintln!("weft-cni: not implemented yet");
    std::process::exit(1);
}
