//! The static `nftpol-cni` binary, installed on hosts as `/opt/cni/bin/nftpol`: a CNI plugin
//! and nothing else.

fn main() {
    std::process::exit(nftpol_cni::plugin::run());
}
