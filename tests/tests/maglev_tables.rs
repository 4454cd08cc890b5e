//! `MAGLEV` written and read through a memory mapping of the map, checked
//! against the kernel's own per-slot view; and a `MAGLEV` pinned without
//! `BPF_F_MMAPABLE` (by an agent from before it), which is still adopted
//! and written one system call per slot.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData};
use gslb_common::TABLE_GENERATIONS;
use gslb_tests::edge::{table_of, TEST_LIMITS};
use gslb_userspace::sys::{maps::MapWrites, steer::Steer};

/// A pin directory on bpffs, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> PinDir {
        let dir = PathBuf::from(format!("/sys/fs/bpf/gslb-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pinned MAGLEV, opened anew: reads through it are one system call
/// per slot, independent of `Steer`'s mapping.
fn pinned_maglev(dir: &Path) -> Array<MapData, u32> {
    let data = MapData::from_pin(dir.join("maps/MAGLEV")).expect("open the pinned MAGLEV");
    Array::try_from(Map::from_map_data(data).expect("a known map type")).expect("an array of u32")
}

fn slots(map: &Array<MapData, u32>, table_id: u32, generation: u32) -> Vec<u32> {
    let base = (table_id * TABLE_GENERATIONS + generation) * TEST_LIMITS.table_size;
    (base..base + TEST_LIMITS.table_size).map(|i| map.get(&i, 0).expect("read a slot")).collect()
}

/// Replaces the pinned MAGLEV with a plain array of the same size, as an
/// agent from before `BPF_F_MMAPABLE` left it.
fn pin_plain_maglev(dir: &Path, max_entries: u32) {
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut attr = CreateAttr { map_type: BPF_MAP_TYPE_ARRAY, key_size: 4, value_size: 4, max_entries, map_flags: 0 };
    // SAFETY: bpf(2) reads `attr`, which lives across the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &mut attr as *mut CreateAttr, std::mem::size_of::<CreateAttr>())
    };
    assert!(fd >= 0, "creating a plain array: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let map = MapData::from_fd(fd).expect("wrap the new map");
    let path = dir.join("maps/MAGLEV");
    std::fs::remove_file(&path).expect("remove the MAGLEV pin");
    map.pin(&path).expect("pin the plain MAGLEV");
}

#[test]
fn tables_written_through_the_mapping_are_what_the_kernel_holds() {
    let pins = PinDir::new("maglev-mapped");
    let mut steer = Steer::load(TEST_LIMITS).expect("load steer");
    assert!(steer.tables_mapped(), "a freshly loaded MAGLEV is memory-mapped");
    steer.pin(&pins.0).expect("pin");
    let kernel = pinned_maglev(&pins.0);

    // The last table of the map, and one in the middle whose generations
    // do not start on a page boundary.
    let (a, b) = (table_of(&[1, 2, 5], &TEST_LIMITS), table_of(&[1, 5], &TEST_LIMITS));
    let empty = vec![0; TEST_LIMITS.table_size as usize];
    for table_id in [TEST_LIMITS.max_vips - 1, 3] {
        steer.write_table(table_id, 1, &a).unwrap();
        assert_eq!(slots(&kernel, table_id, 1), a, "table {table_id}");
        assert_eq!(steer.read_table(table_id, 1).unwrap(), a);
        assert!(steer.table_holds(table_id, 1, &a).unwrap());
        assert!(!steer.table_holds(table_id, 1, &b).unwrap());

        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(differ > 0);
        assert_eq!(steer.patch_table(table_id, 1, &b).unwrap(), differ);
        assert_eq!(slots(&kernel, table_id, 1), b);
        assert_eq!(steer.patch_table(table_id, 1, &b).unwrap(), 0, "nothing left to patch");
        // The other generation, and the neighbouring table, are untouched.
        assert_eq!(slots(&kernel, table_id, 0), empty, "table {table_id} generation 0");
    }
    assert_eq!(slots(&kernel, 2, 1), empty, "table 2 generation 1");
    assert_eq!(slots(&kernel, 4, 0), empty, "table 4 generation 0");
}

#[test]
fn an_old_pin_without_the_flag_is_adopted_and_written_slot_by_slot() {
    let pins = PinDir::new("maglev-plain");
    let mut steer = Steer::load(TEST_LIMITS).expect("load steer");
    steer.pin(&pins.0).expect("pin");
    drop(steer);
    let slots_in_all = TEST_LIMITS.max_vips * TABLE_GENERATIONS * TEST_LIMITS.table_size;
    pin_plain_maglev(&pins.0, slots_in_all);

    let mut old = Steer::open_pinned(&pins.0).expect("adopt a pin without BPF_F_MMAPABLE");
    assert!(!old.tables_mapped());
    assert_eq!(old.limits, TEST_LIMITS);
    let kernel = pinned_maglev(&pins.0);
    let (a, b) = (table_of(&[1, 2, 5], &TEST_LIMITS), table_of(&[2, 5], &TEST_LIMITS));
    old.write_table(5, 0, &a).unwrap();
    assert_eq!(slots(&kernel, 5, 0), a);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(old.patch_table(5, 0, &b).unwrap(), differ);
    assert_eq!(slots(&kernel, 5, 0), b);
    assert!(old.table_holds(5, 0, &b).unwrap());
    drop(old);

    // Adopted again, knowing nothing: read back from the map.
    let mut again = Steer::open_pinned(&pins.0).expect("adopt again");
    assert_eq!(again.read_table(5, 0).unwrap(), b);
    assert!(again.table_holds(5, 0, &b).unwrap());
    assert_eq!(again.patch_table(5, 0, &a).unwrap(), differ);
    assert_eq!(slots(&kernel, 5, 0), a);
}
