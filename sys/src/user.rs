//! Who we run as: the one place weft asks for its effective uid.

/// Our effective user id (the owner a private file must have).
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether we run as root (namespaces, netlink changes and the lab need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_one_the_kernel_reports() {
        // /proc/self/status: "Uid:\t<real>\t<effective>\t<saved>\t<fs>".
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let effective: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(effective_uid(), effective);
        assert_eq!(is_root(), effective == 0);
    }
}
