//! Batched UDP system calls: `recvmmsg` into fixed slots with headroom in front of each
//! payload (so Data indications and ChannelData are framed in place), and `sendmmsg` of
//! queued datagrams. One syscall moves up to [`BATCH`] packets; coturn pays one per packet,
//! which is where its ~10 µs of CPU per echoed message goes (90% kernel, per REAL-CLIENTS.md).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per batched syscall.
pub const BATCH: usize = 32;
/// Largest datagram accepted (the largest UDP payload). The slots are allocated zeroed and
/// the kernel only touches the bytes it writes, so untouched slot pages never become resident.
pub const MAX_DATAGRAM: usize = 65535;
/// Bytes after a payload kept free for padding.
const TAIL: usize = 4;

/// Receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    data: Box<[u8]>,
    slot: usize,
    headroom: usize,
    n: usize,
    lens: [usize; BATCH],
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
}

impl RecvBatch {
    /// `headroom` bytes stay free in front of every payload.
    pub fn new(headroom: usize) -> Self {
        let slot = headroom + MAX_DATAGRAM + TAIL;
        RecvBatch {
            data: vec![0u8; slot * BATCH].into_boxed_slice(),
            slot,
            headroom,
            n: 0,
            lens: [0; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: Box::new(unsafe { zeroed() }),
        }
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Receives up to `max` datagrams without blocking. `WouldBlock` when none is queued.
    pub fn recv(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, BATCH);
        // SAFETY: iovec/mmsghdr are plain old data; zero is valid for both.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let base = self.data.as_mut_ptr();
        for i in 0..max {
            iov[i] = libc::iovec {
                // SAFETY: slot i lies within `data` (BATCH slots were allocated).
                iov_base: unsafe { base.add(i * self.slot + self.headroom) }.cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every pointer in hdrs points into buffers that outlive the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        self.n = r as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs).take(self.n) {
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            *len = if truncated {
                usize::MAX
            } else {
                h.msg_len as usize
            };
        }
        Ok(self.n)
    }

    /// Datagram `i` of the last call: source, its whole slot, where the payload starts and
    /// how long it is. `None` for truncated datagrams and unknown address families.
    pub fn get(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8], usize, usize)> {
        if i >= self.n || self.lens[i] == usize::MAX {
            return None;
        }
        let addr = from_storage(&self.addrs[i])?;
        let slot = &mut self.data[i * self.slot..(i + 1) * self.slot];
        Some((addr, slot, self.headroom, self.lens[i]))
    }
}

/// Datagrams queued for one `sendmmsg` on one socket.
pub struct SendBatch {
    data: Vec<u8>,
    ends: Vec<usize>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        SendBatch {
            data: Vec::with_capacity(BATCH * 1500),
            ends: Vec::with_capacity(BATCH),
            addrs: Vec::with_capacity(BATCH),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Queues a copy of `bytes` for `to`. Returns true when the batch is full.
    pub fn push(&mut self, to: SocketAddr, bytes: &[u8]) -> bool {
        self.data.extend_from_slice(bytes);
        self.ends.push(self.data.len());
        self.addrs.push(to_storage(to));
        self.ends.len() >= BATCH
    }

    /// Sends everything queued; datagrams the kernel will not take now are dropped (UDP).
    /// Returns how many were sent.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let total = self.ends.len();
        let mut sent = 0;
        while sent < total {
            let n = (total - sent).min(BATCH);
            // SAFETY: plain old data, zero is valid.
            let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for j in 0..n {
                let k = sent + j;
                let start = if k == 0 { 0 } else { self.ends[k - 1] };
                iov[j] = libc::iovec {
                    // SAFETY: start..ends[k] lies within `data`.
                    iov_base: unsafe { self.data.as_mut_ptr().add(start) }.cast(),
                    iov_len: self.ends[k] - start,
                };
                let h = &mut hdrs[j].msg_hdr;
                h.msg_name = (&mut self.addrs[k].0 as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = self.addrs[k].1;
                h.msg_iov = &mut iov[j];
                h.msg_iovlen = 1;
            }
            // SAFETY: every pointer in hdrs points into buffers that outlive the call.
            let r = unsafe {
                libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT)
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if r == 0 || e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                // A per-destination error (e.g. ECONNREFUSED from an ICMP): skip that datagram.
                sent += 1;
                continue;
            }
            sent += r as usize;
        }
        self.data.clear();
        self.ends.clear();
        self.addrs.clear();
        sent
    }
}

/// Registers a UDP socket with the current tokio runtime for read readiness (writes are
/// non-blocking and never wait).
pub fn register(
    s: std::net::UdpSocket,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the std socket owns its fd, which stays open and unchanged until the AsyncFd
    // (which owns the socket) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// One datagram now, without batching.
pub fn send_to(fd: RawFd, to: SocketAddr, bytes: &[u8]) -> io::Result<usize> {
    let (ss, len) = to_storage(to);
    // SAFETY: the buffer and the address are valid for the duration of the call.
    let r = unsafe {
        libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain old data, zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let s: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let s: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo().to_be();
            s.sin6_scope_id = a.scope_id();
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sb = SendBatch::new();
        for i in 0..5u8 {
            sb.push(b.local_addr().unwrap(), &[i; 10]);
        }
        assert_eq!(sb.flush(a.as_raw_fd()), 5);
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut rb = RecvBatch::new(48);
        let mut got = 0;
        for _ in 0..50 {
            match rb.recv(b.as_raw_fd(), BATCH) {
                Ok(n) => {
                    for i in 0..n {
                        let (from, slot, at, len) = rb.get(i).unwrap();
                        assert_eq!(from, a.local_addr().unwrap());
                        assert_eq!(len, 10);
                        assert!(slot[at..at + len].iter().all(|&x| x == slot[at]));
                        got += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            if got == 5 {
                break;
            }
        }
        assert_eq!(got, 5);
        let v6: SocketAddr = "[::1]:5".parse().unwrap();
        assert_eq!(from_storage(&to_storage(v6).0), Some(v6));
    }
}
