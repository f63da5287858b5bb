//! Network setup on a machine: loopback up, static IPv4 addresses, default
//! routes, DNS. Spoken over rtnetlink (rtnetlink(7)) with a socket from
//! nix's safe API; the messages are built here as bytes, which keeps the
//! encoding unit-testable without a network namespace.

use std::net::Ipv4Addr;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

use crate::manifest::{Interface, Network};

// linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, linux/if.h
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("open rtnetlink socket")]
    Socket { source: nix::Error },
    #[error("interface {name} not found")]
    NoInterface { name: String, source: nix::Error },
    #[error("{what}")]
    Request { what: String, source: nix::Error },
    #[error("{what}: malformed netlink reply")]
    Reply { what: String },
    #[error("write {path}")]
    Resolv {
        path: String,
        source: std::io::Error,
    },
}

/// One rtnetlink request, built field by field.
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend(0u32.to_ne_bytes()); // length, patched in finish()
        bytes.extend(kind.to_ne_bytes());
        bytes.extend((flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        bytes.extend(seq.to_ne_bytes());
        bytes.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
        Self { bytes }
    }

    fn put(mut self, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(data);
        self
    }

    /// An rtattr, padded to 4 bytes.
    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.bytes.extend(len.to_ne_bytes());
        self.bytes.extend(kind.to_ne_bytes());
        self.bytes.extend_from_slice(data);
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.bytes.len())
            .unwrap_or(u32::MAX)
            .to_ne_bytes();
        for (dst, src) in self.bytes.iter_mut().zip(len) {
            *dst = src;
        }
        self.bytes
    }
}

/// RTM_NEWLINK setting IFF_UP on `index` (what `ip link set DEV up` sends).
pub fn link_up_message(index: u32, seq: u32) -> Vec<u8> {
    link_state_message(index, true, seq)
}

/// RTM_NEWLINK changing only IFF_UP on `index` to `up`.
pub fn link_state_message(index: u32, up: bool, seq: u32) -> Vec<u8> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut ifinfo = vec![0u8, 0];
    ifinfo.extend(0u16.to_ne_bytes());
    ifinfo.extend(index.to_ne_bytes());
    ifinfo.extend((if up { IFF_UP } else { 0 }).to_ne_bytes());
    ifinfo.extend(IFF_UP.to_ne_bytes());
    Message::new(RTM_NEWLINK, 0, seq).put(&ifinfo).finish()
}

/// RTM_NEWADDR: `address/prefix` on `index`.
pub fn add_address_message(index: u32, address: Ipv4Addr, prefix: u8, seq: u32) -> Vec<u8> {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut ifaddr = vec![AF_INET, prefix, 0, RT_SCOPE_UNIVERSE];
    ifaddr.extend(index.to_ne_bytes());
    Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq)
        .put(&ifaddr)
        .attr(IFA_LOCAL, &address.octets())
        .attr(IFA_ADDRESS, &address.octets())
        .finish()
}

/// RTM_NEWROUTE: the default route via `gateway` out of `index`.
pub fn default_route_message(index: u32, gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut rt = vec![
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    rt.extend(0u32.to_ne_bytes());
    Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq)
        .put(&rt)
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr(RTA_OIF, &index.to_ne_bytes())
        .finish()
}

/// The errno of the NLMSG_ERROR acknowledgement for `seq` among the
/// messages of `reply` (0 = success); `None` if it holds none. Every
/// message is walked by its own length; an acknowledgement for `seq` too
/// short to hold its error, or with an error no errno can be, is EBADMSG.
pub fn parse_ack(reply: &[u8], seq: u32) -> Option<i32> {
    let mut at = 0usize;
    while let Some(header) = reply.get(at..at.checked_add(16)?) {
        let word = |i: usize| header.get(i..i + 4).and_then(|b| b.try_into().ok());
        let len = u32::from_ne_bytes(word(0)?) as usize;
        let kind = u16::from_ne_bytes(header.get(4..6)?.try_into().ok()?);
        let got_seq = u32::from_ne_bytes(word(8)?);
        if len < 16 {
            // No message is shorter than its header: the rest is garbage.
            return None;
        }
        if kind == NLMSG_ERROR && got_seq == seq {
            let error = reply
                .get(at + 16..at + 20)
                .filter(|_| len >= 20)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_ne_bytes);
            return Some(match error {
                Some(e) if e <= 0 => e.checked_neg().unwrap_or(nix::libc::EBADMSG),
                _ => nix::libc::EBADMSG,
            });
        }
        // Messages are 4-byte aligned.
        at = at.checked_add(len.checked_add(3)? & !3)?;
    }
    None
}

/// resolv.conf text for the manifest's DNS settings.
pub fn resolv_conf(network: &Network) -> String {
    let mut conf = String::new();
    if !network.search.is_empty() {
        conf.push_str("search ");
        conf.push_str(&network.search.join(" "));
        conf.push('\n');
    }
    for ns in &network.nameservers {
        conf.push_str(&format!("nameserver {ns}\n"));
    }
    conf
}

/// A route netlink socket.
pub struct Rtnetlink {
    fd: std::os::fd::OwnedFd,
    seq: u32,
}

impl Rtnetlink {
    pub fn open() -> Result<Self, NetError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|source| NetError::Socket { source })?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, 0),
        )
        .map_err(|source| NetError::Socket { source })?;
        // The kernel answers at once; a reply that never comes must not
        // hold PID 1 (this runs on its main thread for `network: none`).
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(5, 0),
        )
        .map_err(|source| NetError::Socket { source })?;
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement. `exists_ok`
    /// accepts EEXIST (the address or route is already there).
    fn request(
        &mut self,
        what: String,
        build: impl FnOnce(u32) -> Vec<u8>,
        exists_ok: bool,
    ) -> Result<(), NetError> {
        use std::os::fd::AsRawFd;
        self.seq = self.seq.wrapping_add(1);
        let msg = build(self.seq);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()).map_err(|source| NetError::Request {
            what: what.clone(),
            source,
        })?;
        let mut buf = [0u8; 4096];
        // Replies to other requests are skipped, a bounded number of them.
        for _ in 0..64 {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|source| {
                NetError::Request {
                    what: what.clone(),
                    source,
                }
            })?;
            match parse_ack(buf.get(..n).unwrap_or_default(), self.seq) {
                Some(0) => return Ok(()),
                Some(errno) if exists_ok && errno == nix::libc::EEXIST => return Ok(()),
                Some(errno) => {
                    return Err(NetError::Request {
                        what,
                        source: nix::Error::from_raw(errno),
                    });
                }
                // Not our ack (a stale reply): keep reading.
                None if n > 0 => continue,
                None => return Err(NetError::Reply { what }),
            }
        }
        Err(NetError::Reply { what })
    }

    pub fn link_up(&mut self, name: &str) -> Result<u32, NetError> {
        self.set_link(name, true)
    }

    /// Sets IFF_UP on `name`; returns its index.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<u32, NetError> {
        let index =
            nix::net::if_::if_nametoindex(name).map_err(|source| NetError::NoInterface {
                name: name.to_owned(),
                source,
            })?;
        let what = format!("bring {name} {}", if up { "up" } else { "down" });
        self.request(what, |seq| link_state_message(index, up, seq), false)?;
        Ok(index)
    }

    /// Brings `iface` up with its address and, if given, default route.
    pub fn configure(&mut self, iface: &Interface) -> Result<(), NetError> {
        let index = self.link_up(&iface.name)?;
        self.request(
            format!(
                "add address {}/{} to {}",
                iface.address, iface.prefix, iface.name
            ),
            |seq| add_address_message(index, iface.address, iface.prefix, seq),
            true,
        )?;
        if let Some(gw) = iface.gateway {
            self.request(
                format!("add default route via {gw} dev {}", iface.name),
                |seq| default_route_message(index, gw, seq),
                true,
            )?;
        }
        Ok(())
    }
}

/// Loopback up, every interface configured, resolv.conf written to `resolv`
/// (when the manifest names DNS servers or search domains).
pub fn configure_network(network: &Network, resolv: &std::path::Path) -> Result<(), NetError> {
    let mut nl = Rtnetlink::open()?;
    nl.link_up("lo")?;
    for iface in &network.interfaces {
        nl.configure(iface)?;
    }
    if !network.nameservers.is_empty() || !network.search.is_empty() {
        std::fs::write(resolv, resolv_conf(network)).map_err(|source| NetError::Resolv {
            path: resolv.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn link_up_encoding() {
        let m = link_up_message(7, 42);
        assert_eq!(m.len(), 16 + 16);
        assert_eq!(u32_at(&m, 0), 32, "nlmsg_len");
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 42, "seq");
        assert_eq!(u32_at(&m, 20), 7, "ifi_index");
        assert_eq!(
            (u32_at(&m, 24), u32_at(&m, 28)),
            (IFF_UP, IFF_UP),
            "flags, change"
        );
    }

    #[test]
    fn address_encoding() {
        let m = add_address_message(2, Ipv4Addr::new(10, 0, 2, 15), 24, 1);
        // header 16 + ifaddrmsg 8 + two 8-byte attributes
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), 40);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), 2);
        assert_eq!((u16_at(&m, 24), u16_at(&m, 26)), (8, IFA_LOCAL));
        assert_eq!(&m[28..32], &[10, 0, 2, 15]);
        assert_eq!((u16_at(&m, 32), u16_at(&m, 34)), (8, IFA_ADDRESS));
    }

    #[test]
    fn route_encoding() {
        let m = default_route_message(3, Ipv4Addr::new(10, 0, 2, 2), 9);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(u16_at(&m, 4), RTM_NEWROUTE);
        assert_eq!(
            &m[16..24],
            &[
                AF_INET,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_BOOT,
                RT_SCOPE_UNIVERSE,
                RTN_UNICAST
            ]
        );
        assert_eq!((u16_at(&m, 28), u16_at(&m, 30)), (8, RTA_GATEWAY));
        assert_eq!(&m[32..36], &[10, 0, 2, 2]);
        assert_eq!((u16_at(&m, 36), u16_at(&m, 38)), (8, RTA_OIF));
        assert_eq!(u32_at(&m, 40), 3);
    }

    #[test]
    fn acks() {
        let mut ack = Message::new(NLMSG_ERROR, 0, 5)
            .put(&(-17i32).to_ne_bytes())
            .finish();
        assert_eq!(parse_ack(&ack, 5), Some(17));
        assert_eq!(parse_ack(&ack, 6), None, "another request's ack");
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse_ack(&ack, 5), Some(0));
        assert_eq!(parse_ack(&ack[..10], 5), None);
        let other = Message::new(RTM_NEWLINK, 0, 5).finish();
        assert_eq!(parse_ack(&other, 5), None);
        // Our ack after another message in the same reply.
        let mut two = other.clone();
        while !two.len().is_multiple_of(4) {
            two.push(0);
        }
        two.extend_from_slice(&ack);
        assert_eq!(parse_ack(&two, 5), Some(0));
        // An ack for us too short for its error field, or with an error
        // no errno is: EBADMSG, not a wait for another reply, no panic.
        for len in 16u32..20 {
            let mut short = ack[..len as usize].to_vec();
            short[..4].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(parse_ack(&short, 5), Some(nix::libc::EBADMSG), "{len}");
        }
        ack[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(parse_ack(&ack, 5), Some(nix::libc::EBADMSG));
        ack[16..20].copy_from_slice(&5i32.to_ne_bytes());
        assert_eq!(parse_ack(&ack, 5), Some(nix::libc::EBADMSG));
        // A length below the header's: nothing more is read.
        let mut bad = ack.clone();
        bad[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse_ack(&bad, 5), None);
    }

    #[test]
    fn resolv() {
        let n = Network {
            interfaces: vec![],
            nameservers: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            search: vec!["a.example".into(), "b.example".into()],
            modules: vec![],
        };
        assert_eq!(
            resolv_conf(&n),
            "search a.example b.example\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
        assert_eq!(resolv_conf(&Network::default()), "");
    }

    /// In a fresh network namespace (the test re-runs itself under
    /// `unshare --net`, so the host's network is never touched): loopback
    /// down and up, an address added (twice: EEXIST is accepted) and usable.
    #[test]
    fn configures_loopback_and_an_address_in_a_fresh_netns() {
        if std::env::var_os("BERTH_NET_TEST_INSIDE").is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new("unshare")
                .args(["--net", "--"])
                .arg(exe)
                .args([
                    "--exact",
                    "net::tests::configures_loopback_and_an_address_in_a_fresh_netns",
                    "--nocapture",
                ])
                .env("BERTH_NET_TEST_INSIDE", "1")
                .output()
                .expect("unshare missing: apt-get install util-linux");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(
                text.contains("1 passed"),
                "the inner run did not run the test:\n{text}"
            );
            return;
        }
        // /sys/class/net shows the namespace /sys was mounted in (the
        // host's), so look at behaviour instead: a datagram to 127.0.0.1
        // is unroutable while lo is down.
        let lo_up = || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.send_to(b"x", "127.0.0.1:9").is_ok()
        };
        let mut nl = Rtnetlink::open().unwrap();
        // Depending on the kernel a new namespace's lo starts up or down.
        nl.set_link("lo", false).unwrap();
        assert!(!lo_up());
        nl.link_up("lo").unwrap();
        assert!(lo_up());
        // A second address on lo, twice (the second is EEXIST, accepted),
        // then reachable: bind a socket to it.
        let iface = Interface {
            name: "lo".into(),
            address: Ipv4Addr::new(10, 9, 8, 7),
            prefix: 8,
            gateway: None,
        };
        nl.configure(&iface).unwrap();
        nl.configure(&iface).unwrap();
        std::net::UdpSocket::bind("10.9.8.7:0").expect("address configured");
        assert!(matches!(
            nl.link_up("nosuch0"),
            Err(NetError::NoInterface { .. })
        ));
    }
}
