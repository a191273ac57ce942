//! Memory bounds of the in-memory defences, measured with a counting allocator (net bytes
//! allocated by the current thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use portcullis::client::AddressKey;
use portcullis::config::Rate;
use portcullis::failures::FailureTracker;
use portcullis::rate_limit::{username_digest, LoginQuotas};

pub struct Counting;

thread_local! {
    static NET: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator and only adds thread-local bookkeeping, which
// itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = NET.try_with(|n| n.set(n.get() + layout.size() as isize));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = NET.try_with(|n| n.set(n.get() - layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = NET.try_with(|n| n.set(n.get() + new_size as isize - layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn net_allocated() -> isize {
    NET.with(|n| n.get())
}

/// The bound README.md states for 100,000 distinct attacking addresses and usernames.
const STATED_BOUND_FOR_100K: isize = 32 * 1024 * 1024;

#[test]
fn a_hundred_thousand_attacking_addresses_and_usernames_stay_within_the_stated_memory() {
    let before = net_allocated();
    let quotas = LoginQuotas::new(
        Some(Rate { burst: 20, period: Duration::from_secs(60) }),
        Some(Rate { burst: 10, period: Duration::from_secs(900) }),
    );
    let failures = FailureTracker::new(Duration::from_secs(900), 3);
    let now = 1_000_000_000;
    for i in 0..100_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        // 64-character usernames: the longest accepted.
        let user = format!("{i:0>64}");
        let _ = quotas.per_address.check(&AddressKey::of(ip));
        let _ = quotas.per_username.check(&username_digest(&user));
        failures.record_failure(AddressKey::of(ip), &user, now);
    }
    let used = net_allocated() - before;
    assert_eq!(quotas.per_address.len(), 100_000);
    assert_eq!(failures.len(), (100_000, 100_000));
    println!("100,000 attackers: {:.1} MiB ({} bytes per attacker)", used as f64 / 1048576.0, used / 100_000);
    assert!(used < STATED_BOUND_FOR_100K, "{used} bytes");
    // Once the window has passed, pruning gives it back.
    failures.prune(now + 901_000);
    assert_eq!(failures.len(), (0, 0));
    drop(quotas);
    drop(failures);
    let after = net_allocated() - before;
    assert!(after < 1024 * 1024, "{after} bytes left after dropping");
}
