//! The embedded log under storage faults, on [`FaultFs`]: power cuts that lose what was not
//! fsynced, a full disk, a failing fsync, a slow one.

use std::path::PathBuf;

use crate::faultfs::FaultFs;

/// A scratch directory holding the filesystem's backing data and its mount point.
struct Disk {
    _scratch: tempfile::TempDir,
    base: PathBuf,
    mountpoint: PathBuf,
}

impl Disk {
    fn new() -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let (base, mountpoint) = (scratch.path().join("disk"), scratch.path().join("mnt"));
        Self {
            _scratch: scratch,
            base,
            mountpoint,
        }
    }

    fn mount(&self) -> FaultFs {
        FaultFs::mount(&self.base, &self.mountpoint)
            .expect("mounting the FUSE filesystem needs /dev/fuse and root (CI runs as root)")
    }
}

#[test]
fn the_fault_filesystem_keeps_after_a_power_cut_only_what_was_fsynced() {
    // Arrange
    let disk = Disk::new();
    let fs = disk.mount();
    let dir = fs.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::File::open(fs.path()).unwrap().sync_all().unwrap();
    let synced = dir.join("synced");
    std::fs::write(&synced, b"kept").unwrap();
    std::fs::File::open(&synced).unwrap().sync_data().unwrap();
    std::fs::File::open(&dir).unwrap().sync_all().unwrap();

    // Act: more data in the synced file, a new file never fsynced, a file whose data was
    // fsynced but not its directory entry, a rename over the synced file's neighbour.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&synced)
        .unwrap();
    f.write_all(b" and lost").unwrap();
    drop(f);
    std::fs::write(dir.join("unsynced"), b"lost").unwrap();
    std::fs::write(dir.join("entry-unsynced"), b"data synced").unwrap();
    std::fs::File::open(dir.join("entry-unsynced"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(std::fs::read(&synced).unwrap(), b"kept and lost");
    let undone = fs.faults().cut_power();
    drop(fs);
    let fs = disk.mount();

    // Assert
    let dir = fs.path().join("dir");
    assert!(undone > 0);
    assert_eq!(std::fs::read(dir.join("synced")).unwrap(), b"kept");
    assert!(!dir.join("unsynced").exists());
    assert!(!dir.join("entry-unsynced").exists());
}

#[test]
fn the_fault_filesystem_fails_on_command() {
    // Arrange
    let disk = Disk::new();
    let fs = disk.mount();
    let faults = fs.faults();
    let file = fs.path().join("file");
    std::fs::write(&file, b"before").unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();

    // Act + Assert: a full disk
    faults.set_full(true);
    let full = std::fs::write(fs.path().join("other"), b"x").unwrap_err();
    assert_eq!(full.raw_os_error(), Some(28), "ENOSPC: {full}");
    faults.set_full(false);

    // A failing fsync drops what it did not make durable.
    faults.set_fsync_fails(true);
    std::fs::write(&file, b"after!").unwrap();
    let failed = std::fs::File::open(&file).unwrap().sync_all().unwrap_err();
    assert_eq!(failed.raw_os_error(), Some(5), "EIO: {failed}");
    assert_eq!(faults.failed_fsyncs(), 1);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"before",
        "unsynced writes dropped"
    );
    faults.set_fsync_fails(false);

    // A slow fsync.
    faults.set_fsync_delay(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}
