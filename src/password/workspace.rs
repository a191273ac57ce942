//! One hashing thread's argon2 memory: a block buffer reused from one hash to the next, mapped
//! on huge pages where the kernel allows, kept out of core dumps, and wiped of everything a
//! password left in it.

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version, RECOMMENDED_SALT_LEN};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::pool::PoolError;

/// One worker's argon2 memory: a block buffer reused from one hash to the next, so no
/// fresh pages are mapped and zeroed for every hash.
///
/// Wiping: a [`Workspace::new`] wipes (zeroize) the blocks after every hash. The pool's
/// workers use [`Workspace::wiped_when_idle`] instead: they call [`Workspace::wipe`] as soon
/// as no job is waiting, and while jobs queue back to back the next hash's first pass
/// overwrites every block the previous one wrote (a smaller next hash wipes the rest
/// first). Under a login flood that saves a full-buffer wipe per hash (about a tenth of a
/// verify at 19 MiB); password-derived memory still never outlives the busy period, and is
/// wiped before the buffer is shrunk or freed.
pub struct Workspace {
    blocks: BlockBuffer,
    /// Blocks written since the last wipe (a prefix of `blocks`).
    dirty: usize,
    wipe_after_each: bool,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        self.wipe();
    }
}

fn wipe_blocks(blocks: &mut [Block]) {
    for block in blocks {
        block.zeroize();
    }
}

impl Workspace {
    /// An empty workspace that wipes after every hash; the buffer is allocated at the first
    /// hash, so an idle server does not hold it.
    pub fn new() -> Self {
        Workspace { blocks: BlockBuffer::empty(), dirty: 0, wipe_after_each: true }
    }

    /// An empty workspace whose owner calls [`Workspace::wipe`] when it goes idle.
    pub fn wiped_when_idle() -> Self {
        Workspace { blocks: BlockBuffer::empty(), dirty: 0, wipe_after_each: false }
    }

    /// Bytes held between hashes.
    pub fn held_bytes(&self) -> usize {
        self.blocks.len() * Block::SIZE
    }

    /// Bytes of the buffer the kernel backs with huge pages (0 where it cannot tell).
    pub fn huge_page_bytes(&self) -> usize {
        self.blocks.huge_page_bytes()
    }

    /// Whether password-derived memory is held now.
    pub fn is_dirty(&self) -> bool {
        self.dirty > 0
    }

    /// Wipes and frees the buffer (the next hash allocates it again).
    pub fn release(&mut self) {
        self.wipe();
        self.blocks = BlockBuffer::empty();
    }

    /// Zeroes every block written since the last wipe.
    pub fn wipe(&mut self) {
        let blocks = self.blocks.as_mut_slice();
        let dirty = self.dirty.min(blocks.len());
        wipe_blocks(&mut blocks[..dirty]);
        self.dirty = 0;
    }

    /// Runs argon2 into `out` on this workspace's memory.
    fn compute(&mut self, argon2: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> argon2::Result<()> {
        let count = argon2.params().block_count();
        if self.blocks.len() < count {
            // Wipe what the old buffer held before it is unmapped.
            self.release();
            self.blocks = BlockBuffer::zeroed(count);
        }
        let blocks = self.blocks.as_mut_slice();
        if self.dirty > count {
            // This hash overwrites only the first `count` blocks; the rest must not linger.
            wipe_blocks(&mut blocks[count..self.dirty]);
        }
        self.dirty = count;
        let result = argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..count]);
        if self.wipe_after_each {
            self.wipe();
        }
        result
    }

    /// Gives back the buffer when it is larger than `params` need (after checking an older,
    /// larger hash), wiped first, so the pool never holds more than `workers × argon2 memory`
    /// for long. Rare, so the next hash simply maps a buffer of the right size.
    pub(super) fn trim(&mut self, params: &Params) {
        if self.blocks.len() > params.block_count() {
            self.release();
        }
    }

    /// Checks `password` against a parsed PHC hash of any argon2 variant, version and
    /// parameters, comparing the outputs in constant time.
    pub fn verify(&mut self, password: &[u8], hash: &PasswordHash) -> bool {
        let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else { return false };
        let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else { return false };
        let version = match hash.version.map(Version::try_from).transpose() {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => return false,
        };
        let Ok(params) = Params::try_from(hash) else { return false };
        let argon2 = Argon2::new(algorithm, version, params);
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let Some(out) = buffer.get_mut(..expected.len()) else { return false };
        let computed = self.compute(&argon2, password, salt, out).is_ok();
        let same: bool = expected.as_bytes().ct_eq(out).into();
        buffer.zeroize();
        computed && same
    }

    /// Hashes a new password with a fresh random salt; the PHC string is the one
    /// `argon2::PasswordHasher::hash_password` would give.
    pub fn hash(&mut self, argon2: &Argon2<'_>, password: &[u8]) -> Result<String, PoolError> {
        let mut salt = [0u8; RECOMMENDED_SALT_LEN];
        crate::random::fill(&mut salt)?;
        self.hash_with_salt(argon2, password, &salt)
    }

    /// As [`Workspace::hash`], with the salt given (for tests and benches). `argon2` must be
    /// an argon2id, version 0x13 instance (as the pool's is).
    pub fn hash_with_salt(&mut self, argon2: &Argon2<'_>, password: &[u8], salt: &[u8]) -> Result<String, PoolError> {
        let err = |e: &dyn std::fmt::Display| PoolError::Hash(e.to_string());
        let params = argon2.params();
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let out = buffer
            .get_mut(..params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN))
            .ok_or_else(|| PoolError::Hash("output too long".into()))?;
        self.compute(argon2, password, salt, out).map_err(|e| err(&e))?;
        let output = Output::new(out).map_err(|e| err(&e));
        buffer.zeroize();
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(params).map_err(|e| err(&e))?,
            salt: Some(Salt::new(salt).map_err(|e| err(&e))?),
            hash: Some(output?),
        };
        Ok(phc.to_string())
    }
}

/// Huge pages are this large on x86-64 and (by default) on aarch64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// Argon2 blocks in their own anonymous mapping, outside the allocator:
/// - aligned to 2 MiB and advised `MADV_HUGEPAGE`, so the kernel can back it with huge pages
///   (argon2 reads blocks at random across all of its memory, and with 4 KiB pages nearly
///   every read of a reference block misses the TLB; with 2 MiB pages a 19 MiB hash needs
///   ten entries, which makes it roughly a tenth faster here, see BENCHMARKS.md);
/// - advised `MADV_DONTDUMP`, so password-derived blocks never end up in a core dump;
/// - unmapped when dropped, so an idle worker's memory goes back to the system at once
///   rather than staying in the allocator's free lists.
///
/// Fresh mappings are zero-filled by the kernel, and zero bytes are a valid `Block`.
struct BlockBuffer {
    /// Start of `len` blocks (dangling when `len` is 0).
    ptr: std::ptr::NonNull<Block>,
    len: usize,
}

// SAFETY: the buffer owns its mapping exclusively (like a `Box<[Block]>`) and `Block` is
// plain data, so moving it to another thread is sound.
unsafe impl Send for BlockBuffer {}

impl BlockBuffer {
    fn empty() -> Self {
        BlockBuffer { ptr: std::ptr::NonNull::dangling(), len: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Bytes to map for `len` blocks: whole pages.
    fn mapped_bytes(len: usize) -> usize {
        (len * Block::SIZE).next_multiple_of(page_size())
    }

    /// Maps `len` zeroed blocks. Running out of address space aborts, as it does for a `Vec`.
    fn zeroed(len: usize) -> Self {
        if len == 0 {
            return BlockBuffer::empty();
        }
        let size = Self::mapped_bytes(len);
        // Over-map by one huge page so an aligned start can be carved out of it.
        let slack = if size >= HUGE_PAGE { HUGE_PAGE } else { 0 };
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size + slack,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            let layout = std::alloc::Layout::array::<Block>(len).unwrap_or(std::alloc::Layout::new::<Block>());
            std::alloc::handle_alloc_error(layout);
        }
        let start = raw as usize;
        let aligned = if slack > 0 { start.next_multiple_of(HUGE_PAGE) } else { start };
        let head = aligned - start;
        let tail = slack - head;
        // SAFETY: both ranges lie inside the mapping just made, are page-aligned (the mapping
        // and HUGE_PAGE are), and are not in use; unmapping them cannot fail for a valid range.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + size) as *mut libc::c_void, tail);
            }
        }
        advise(aligned as *mut libc::c_void, size);
        // `aligned` is non-null (mmap succeeded) and, being page-aligned, aligned for `Block`.
        let ptr = std::ptr::NonNull::new(aligned as *mut Block).unwrap_or(std::ptr::NonNull::dangling());
        BlockBuffer { ptr, len }
    }

    fn as_mut_slice(&mut self) -> &mut [Block] {
        // SAFETY: `ptr` is valid for `len` initialised blocks (zero-filled by the kernel or
        // written since) that only this buffer refers to; dangling with `len` 0 is allowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Huge-page bytes of the mapping that holds this buffer, from /proc/self/smaps (0 when
    /// not found). A diagnostic for benchmarks: the kernel may merge neighbouring mappings.
    fn huge_page_bytes(&self) -> usize {
        if self.len == 0 {
            return 0;
        }
        let at = self.ptr.as_ptr() as usize;
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
        let contains = |line: &str| {
            let range = line.split(' ').next().unwrap_or("");
            let Some((a, b)) = range.split_once('-') else { return false };
            match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                (Ok(a), Ok(b)) => a <= at && at < b,
                _ => false,
            }
        };
        smaps
            .lines()
            .skip_while(|l| !contains(l))
            .skip(1)
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for BlockBuffer {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: exactly the range mapped in `zeroed`, unmapped once.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), Self::mapped_bytes(self.len));
            }
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

/// Best effort: a kernel without transparent huge pages, or one that refuses, just leaves
/// the buffer on normal pages (and in core dumps, which a server should disable anyway).
fn advise(start: *mut libc::c_void, size: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: madvise only changes how the kernel backs a range of our own mapping.
    unsafe {
        libc::madvise(start, size, libc::MADV_HUGEPAGE);
        libc::madvise(start, size, libc::MADV_DONTDUMP);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, size);
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;

    fn all_zero(blocks: &[Block]) -> bool {
        blocks.iter().all(|b| format!("{b:?}").bytes().filter(u8::is_ascii_digit).all(|d| d == b'0'))
    }

    fn held(ws: &mut Workspace) -> &[Block] {
        ws.blocks.as_mut_slice()
    }

    #[test]
    fn the_reused_workspace_gives_the_crates_phc_string_and_verifies_like_it() {
        use argon2::PasswordVerifier;
        for (m, t) in [(64, 1), (256, 3), (32, 2), (4096, 1)] {
            let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(m, t, 1, None).unwrap());
            let salt = [7u8; RECOMMENDED_SALT_LEN];
            let mut ws = Workspace::new();
            let ours = ws.hash_with_salt(&argon2, b"plum tractor velvet orbit", &salt).unwrap();
            let theirs = argon2.hash_password_with_salt(b"plum tractor velvet orbit", &salt).unwrap().to_string();
            assert_eq!(ours, theirs);
            let fresh = ws.hash(&argon2, b"plum tractor velvet orbit").unwrap();
            assert_ne!(fresh, ours, "a fresh salt each time");
            let parsed = PasswordHash::new(&fresh).unwrap();
            assert!(argon2.verify_password(b"plum tractor velvet orbit", &parsed).is_ok());
            assert!(ws.verify(b"plum tractor velvet orbit", &parsed));
            assert!(!ws.verify(b"plum tractor velvet orbiT", &parsed));
            // Wiped after use: nothing password-derived is left in the buffer.
            assert!(all_zero(held(&mut ws)) && !ws.is_dirty());
        }
        // Other variants and versions are checked too (older hashes).
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x10, Params::new(64, 1, 1, None).unwrap());
        let old = argon2i.hash_password(b"plum tractor velvet orbit").unwrap().to_string();
        assert!(Workspace::new().verify(b"plum tractor velvet orbit", &PasswordHash::new(&old).unwrap()));
    }

    #[test]
    fn a_released_workspace_holds_no_memory() {
        let mut ws = Workspace::wiped_when_idle();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(64, 1, 1, None).unwrap());
        let mut out = [0u8; 32];
        ws.compute(&argon2, b"pw", b"saltsaltsalt", &mut out).unwrap();
        assert!(ws.held_bytes() > 0 && ws.is_dirty());
        ws.release();
        assert_eq!(ws.held_bytes(), 0);
        assert!(!ws.is_dirty());
    }

    #[test]
    fn a_workspace_wiped_when_idle_is_clean_after_wipe_and_when_a_smaller_hash_follows() {
        let big = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(256, 1, 1, None).unwrap());
        let small = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(64, 1, 1, None).unwrap());
        let mut ws = Workspace::wiped_when_idle();
        let phc = ws.hash(&big, b"plum tractor velvet orbit").unwrap();
        assert!(ws.is_dirty() && !all_zero(held(&mut ws)));
        assert!(ws.verify(b"plum tractor velvet orbit", &PasswordHash::new(&phc).unwrap()));
        ws.hash(&small, b"plum tractor velvet orbit").unwrap();
        assert!(all_zero(&held(&mut ws)[64..]), "blocks the smaller hash did not use were wiped");
        ws.wipe();
        assert!(!ws.is_dirty() && all_zero(held(&mut ws)));
    }

    #[test]
    fn a_buffer_larger_than_a_huge_page_starts_on_a_huge_page_boundary_and_is_whole() {
        let mut buffer = BlockBuffer::zeroed(5 * 1024 + 3); // 5 MiB and 3 KiB
        let blocks = buffer.as_mut_slice();
        assert_eq!(blocks.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(all_zero(blocks));
        // Every block is mapped and writable, the last one included.
        let n = blocks.len();
        blocks[n - 1] = Block::new();
        let small = BlockBuffer::zeroed(3);
        assert_eq!(small.ptr.as_ptr() as usize % std::mem::align_of::<Block>(), 0);
    }

    /// The kernel's flags for the mapping holding `at` ("dd": not dumped, "hg": huge pages
    /// advised).
    #[cfg(target_os = "linux")]
    fn vm_flags(at: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((a, b)) = line.split(' ').next().and_then(|r| r.split_once('-')) {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    inside = a <= at && at < b;
                    continue;
                }
            }
            if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
                return flags.to_string();
            }
        }
        panic!("no mapping holds {at:x}")
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn password_derived_blocks_stay_out_of_core_dumps_and_ask_for_huge_pages() {
        let mut ws = Workspace::wiped_when_idle();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, None).unwrap());
        ws.hash(&argon2, b"plum tractor velvet orbit").unwrap();
        let flags = vm_flags(held(&mut ws).as_ptr() as usize);
        assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    }
}
