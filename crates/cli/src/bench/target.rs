//! The server under test: where it is (loopback unless allowed otherwise) and, when it runs on
//! this machine, which process it is and how much memory it holds.

use std::net::{IpAddr, ToSocketAddrs};

use anyhow::{Context, bail};

/// Checks the URL (or each of a comma-separated list: the nodes of a cluster) and refuses
/// targets outside loopback without `--allow-remote`. The port is the first URL's.
pub fn check(urls: &str, allow_remote: bool) -> anyhow::Result<u16> {
    let mut first = None;
    for url in urls.split(',') {
        let port = check_one(url, allow_remote)?;
        first.get_or_insert(port);
    }
    first.context("no URL given")
}

fn check_one(url: &str, allow_remote: bool) -> anyhow::Result<u16> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .with_context(|| format!("{url} is not a ws:// or wss:// URL"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let default_port = if url.starts_with("wss://") { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h, p.parse().with_context(|| format!("bad port in {url}"))?)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .map(|a| a.ip())
        .collect();
    if !allow_remote && addrs.iter().any(|ip| !ip.is_loopback()) {
        bail!(
            "{host} is not a loopback address; benchmarks target this machine unless given --allow-remote"
        );
    }
    Ok(port)
}

/// The PID of the process listening on `port` on this machine, from /proc.
pub fn find_listener(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let local_port = f.get(1)?.rsplit(':').next()?;
                    // State 0A is LISTEN.
                    (u16::from_str_radix(local_port, 16).ok()? == port && f.get(3)? == &"0A")
                        .then(|| f.get(9).map(|s| s.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy();
                if inodes.iter().any(|i| link == format!("socket:[{i}]")) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn only_loopback_without_allow_remote() {
        assert_eq!(check("ws://127.0.0.1:9000/ws", false).unwrap(), 9000);
        assert_eq!(check("ws://localhost:9001/ws", false).unwrap(), 9001);
        assert_eq!(check("ws://[::1]:9002/ws", false).unwrap(), 9002);
        assert!(check("ws://192.0.2.1:9000/ws", false).is_err());
        assert!(check("ws://192.0.2.1:9000/ws", true).is_ok());
        assert!(check("http://127.0.0.1/ws", false).is_err());
    }

    #[test]
    fn every_node_of_a_list_is_checked_and_the_first_port_returned() {
        let nodes = "ws://127.0.0.1:9000/ws,ws://127.0.0.1:9001/ws";
        assert_eq!(check(nodes, false).unwrap(), 9000);
        assert!(check("ws://127.0.0.1:9000/ws,ws://192.0.2.1:9000/ws", false).is_err());
        assert!(check("ws://127.0.0.1:9000/ws,", false).is_err());
    }
}
