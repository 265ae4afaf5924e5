//! mimalloc as the global allocator, called the way std calls the C allocator.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`, and
//! mimalloc's aligned entry point only takes its fast path when the next free block happens to
//! be aligned to the *requested* alignment; otherwise it goes through a generic path. Under
//! load that was ~170 instructions per allocation, ~15 allocations per proxied request
//! (docs/BENCHMARKS.md). Like `malloc`, `mi_malloc` already returns blocks aligned to 16 bytes
//! whenever they are at least 16 bytes long (mimalloc's size classes are whole multiples of
//! `MI_MAX_ALIGN_SIZE` past 8 bytes), so a layout asking for no more than that takes the plain
//! call, exactly the rule std's `System` allocator applies to glibc. Anything else still goes
//! to the aligned calls.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment every mimalloc block of at least this many bytes has (`MI_MAX_ALIGN_SIZE`,
/// C's `alignof(max_align_t)` on the 64-bit targets edgegate builds for).
const MIN_ALIGN: usize = 16;

pub struct MiMalloc;

/// Whether a block of `size` bytes from the plain calls is aligned enough for `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every pointer comes from and goes back to mimalloc; the plain calls are used only
// where their blocks meet the layout's alignment (see `plain`), the aligned ones otherwise.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = if plain(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size())
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align())
        };
        p.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = if plain(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size())
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align())
        };
        p.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size)
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align())
        };
        p.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust type can ask for, through every entry point, comes back
    /// aligned and writable; a wrong `plain` rule fails here (an 8-byte block asked for
    /// 16-byte alignment, say).
    #[test]
    fn blocks_meet_the_layouts_alignment() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=512).chain([4095, 4096, 65536, 65537, 1 << 20]) {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: non-zero sizes, each block freed once with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc size {size} align {align}"
                    );
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|&b| b == 0xa5));
                    a.dealloc(
                        grown,
                        Layout::from_size_align(size * 3, align).expect("layout"),
                    );
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
