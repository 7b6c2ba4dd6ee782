//! Reading a project without ever following a symbolic link below the project directory.
//!
//! A project is untrusted input (a checkout, an archive from a colleague): a symlink in it, to a
//! file or to a directory, could carry the signing key, `/etc` files or anything else the user
//! can read into a signed bundle. So everything below the project directory is reached from a
//! descriptor of that directory, and a symlink at any component of a path is refused with its
//! path named: while walking the project, when reading a mapping or credential file, and when
//! reading a mapping's `files` (the bundle writer opens them through [`Project::open_file`]).
//!
//! What is guaranteed, also against someone changing the project while it is packaged: no file
//! is read through a symbolic link below the project directory. Every open resolves its whole
//! relative path in the kernel with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH` (`openat2`, Linux
//! 5.6 and later) or, where that call is missing or filtered, component by component with
//! `O_NOFOLLOW` from the descriptor of the directory above. Nothing is checked first and opened
//! later by name, so there is no window: a link swapped in at any moment makes the open fail,
//! never succeed through the link. Only regular files are read (checked on the open
//! descriptor); a FIFO or device cannot block or feed the packager. A file that changes between
//! the writer's two reads is refused by the writer's digest check.
//!
//! What is not guaranteed: the project directory itself is opened as the user named it, links
//! followed (the user chose that path, as with `cd`; a symlinked checkout or home directory
//! keeps working). A hard link is an ordinary directory entry and cannot be told from a file
//! (whoever can hard-link a file into the project could copy it there, and the kernel's
//! `protected_hardlinks` stops links to files one cannot read). A mount point below the project
//! is crossed (only an administrator can mount). A directory moved into the project while it is
//! walked is read like any other directory of the project.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// How deep the walk goes below the project directory before it gives up.
const MAX_DEPTH: usize = 128;

/// Flags for opening a file to read: never through a final symlink, never blocking on a FIFO,
/// never becoming the controlling terminal.
fn file_flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY
}

/// Flags for opening a directory on the way down.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::DIRECTORY
}

/// A refused symbolic link, by its full path.
#[derive(Debug)]
pub struct SymlinkRefused(pub PathBuf);

impl std::fmt::Display for SymlinkRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is a symbolic link; flowpack never reads a project through symbolic links \
             (replace it with the file or directory it points to)",
            crate::text::path(&self.0)
        )
    }
}

impl std::error::Error for SymlinkRefused {}

/// A project directory, held open.
#[derive(Debug)]
pub struct Project {
    root: PathBuf,
    fd: OwnedFd,
}

impl Project {
    /// Opens the project directory `root`, following links in `root` itself (the user's choice).
    pub fn open(root: &Path) -> anyhow::Result<Project> {
        let ctx = || format!("project {}", crate::text::path(root));
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => anyhow::anyhow!("not a directory"),
            e => anyhow::Error::new(io::Error::from(e)),
        })
        .map_err(|e| e.context(ctx()))?;
        Ok(Project {
            root: root.to_owned(),
            fd,
        })
    }

    /// The project directory as the user named it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every regular file below the project directory, as paths relative to it, sorted.
    /// A symbolic link anywhere is an error naming it; FIFOs, sockets and devices are skipped.
    pub fn files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let here = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty())
            .map_err(|e| self.io_error(Path::new(""), e))?;
        self.walk(here, Path::new(""), 0, &mut out)?;
        out.sort();
        Ok(out)
    }

    fn walk(
        &self,
        fd: OwnedFd,
        rel: &Path,
        depth: usize,
        out: &mut Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        let mut dir = Dir::new(fd).map_err(|e| self.io_error(rel, e))?;
        let mut entries: Vec<(OsString, FileType)> = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| self.io_error(rel, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            entries.push((OsStr::from_bytes(name).to_owned(), entry.file_type()));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let dir_fd = dir.fd().map_err(|e| self.io_error(rel, e))?;
        for (name, file_type) in entries {
            let path = rel.join(&name);
            let file_type = match file_type {
                FileType::Unknown => {
                    let st = rustix::fs::statat(dir_fd, &*name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| self.io_error(&path, e))?;
                    FileType::from_raw_mode(st.st_mode)
                }
                known => known,
            };
            match file_type {
                FileType::Symlink => {
                    return Err(SymlinkRefused(self.root.join(&path)).into());
                }
                FileType::Directory => {
                    if depth >= MAX_DEPTH {
                        anyhow::bail!(
                            "{}: more than {MAX_DEPTH} directories deep",
                            crate::text::path(&self.root.join(&path))
                        );
                    }
                    // A directory replaced by a link since it was listed fails here (ELOOP or
                    // ENOTDIR under O_NOFOLLOW | O_DIRECTORY), never leads through the link.
                    let sub = rustix::fs::openat(dir_fd, &name, dir_flags(), Mode::empty())
                        .map_err(|e| self.to_anyhow(&path, self.explain(&path, e)))?;
                    self.walk(sub, &path, depth + 1, out)?;
                }
                FileType::RegularFile => out.push(path),
                _ => {}
            }
        }
        Ok(())
    }

    /// Opens the regular file at `rel` (relative to the project directory) for reading, never
    /// through a symbolic link at any component. A refused link's error holds a
    /// [`SymlinkRefused`] naming it.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(io::Error::other(format!(
                "{}: not a plain relative path",
                crate::text::path(rel)
            )));
        }
        let fd = self.open_beneath(rel)?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::other(
                "not a regular file (directories and special files are not packaged)",
            ));
        }
        Ok(File::from(fd))
    }

    /// Reads the whole regular file at `rel`; errors name the file.
    pub fn read(&self, rel: &Path) -> anyhow::Result<Vec<u8>> {
        let mut f = self.open_file(rel).map_err(|e| self.to_anyhow(rel, e))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| self.to_anyhow(rel, e))?;
        Ok(bytes)
    }

    /// The opener for `write_bundle_with`: it gets the paths the writer builds (the project
    /// directory joined with a mapping's directory and file) and opens them with [`open_file`].
    ///
    /// [`open_file`]: Project::open_file
    pub fn into_opener(self) -> impl Fn(&Path) -> io::Result<File> + Sync + 'static {
        move |p: &Path| {
            let rel = p
                .strip_prefix(&self.root)
                .map_err(|_| io::Error::other("outside the project directory (refused)"))?;
            self.open_file(rel)
        }
    }

    fn open_beneath(&self, rel: &Path) -> io::Result<OwnedFd> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::fs::ResolveFlags;
            let how =
                ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.fd, rel, file_flags(), Mode::empty(), how) {
                Ok(fd) => return Ok(fd),
                // No openat2 (kernel before 5.6), a seccomp filter that refuses it, or a rename
                // racing with RESOLVE_BENEATH: open component by component instead.
                Err(Errno::NOSYS | Errno::PERM | Errno::AGAIN) => {}
                Err(e) => return Err(self.explain(rel, e)),
            }
        }
        self.open_by_components(rel)
    }

    /// Opens `rel` one component at a time, each with `O_NOFOLLOW` relative to the descriptor
    /// of the directory above.
    fn open_by_components(&self, rel: &Path) -> io::Result<OwnedFd> {
        let parts: Vec<&OsStr> = rel.iter().collect();
        let mut current: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let parent: BorrowedFd<'_> = match &current {
                Some(fd) => fd.as_fd(),
                None => self.fd.as_fd(),
            };
            let flags = if last { file_flags() } else { dir_flags() };
            let fd = rustix::fs::openat(parent, *part, flags, Mode::empty())
                .map_err(|e| self.explain(rel, e))?;
            current = Some(fd);
        }
        current.ok_or_else(|| io::Error::other("empty path"))
    }

    /// Turns an open failure into a [`SymlinkRefused`] naming the first link on the way to
    /// `rel` when there is one (ELOOP and ENOTDIR are what a link under O_NOFOLLOW,
    /// O_DIRECTORY or RESOLVE_NO_SYMLINKS gives), else into the plain error.
    fn explain(&self, rel: &Path, e: Errno) -> io::Error {
        if matches!(e, Errno::LOOP | Errno::NOTDIR | Errno::XDEV) {
            let mut prefix = PathBuf::new();
            for part in rel.iter() {
                prefix.push(part);
                match rustix::fs::statat(&self.fd, &prefix, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                        return io::Error::other(SymlinkRefused(self.root.join(&prefix)));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if e == Errno::LOOP {
                // The link was there when the open failed and is gone now.
                return io::Error::other(format!(
                    "{}: a symbolic link was on the way to it; flowpack never reads a project \
                     through symbolic links",
                    crate::text::path(&self.root.join(rel))
                ));
            }
        }
        io::Error::from(e)
    }

    fn io_error(&self, rel: &Path, e: Errno) -> anyhow::Error {
        self.to_anyhow(rel, io::Error::from(e))
    }

    /// A [`SymlinkRefused`] as it is (it names its path); any other error with the path of
    /// `rel` as context.
    fn to_anyhow(&self, rel: &Path, e: io::Error) -> anyhow::Error {
        if let Some(refused) = e.get_ref().and_then(|i| i.downcast_ref::<SymlinkRefused>()) {
            return anyhow::Error::new(SymlinkRefused(refused.0.clone()));
        }
        anyhow::Error::new(e).context(format!(
            "reading {}",
            crate::text::path(&self.root.join(rel))
        ))
    }
}

/// Opens a credential file named on the command line for reading: the directories on the way
/// are the user's choice (as the project directory is), but the file itself must not be a
/// symbolic link (an argument list is often a glob over a directory someone else filled), and
/// must be a regular file.
pub fn open_named_file(path: &Path) -> anyhow::Result<File> {
    match rustix::fs::open(path, file_flags(), Mode::empty()) {
        Ok(fd) => {
            let st = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                anyhow::bail!("not a regular file");
            }
            Ok(File::from(fd))
        }
        Err(Errno::LOOP)
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            anyhow::bail!(
                "a symbolic link; flowpack does not read a credential file through a symbolic \
                 link (name the file it points to)"
            )
        }
        Err(e) => Err(io::Error::from(e).into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    /// root/{a.txt, sub/b.txt}, outside/secret.txt, and root/link -> outside.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(root.join("sub/b.txt"), "b").unwrap();
        std::fs::create_dir(t.path().join("outside")).unwrap();
        std::fs::write(t.path().join("outside/secret.txt"), "secret").unwrap();
        (t, root)
    }

    fn refused_path(e: &io::Error) -> Option<PathBuf> {
        e.get_ref()?
            .downcast_ref::<SymlinkRefused>()
            .map(|r| r.0.clone())
    }

    #[test]
    fn reads_plain_files_in_both_ways() {
        let (_t, root) = tree();
        let p = Project::open(&root).unwrap();
        for (rel, content) in [("a.txt", "a"), ("sub/b.txt", "b")] {
            let mut s = String::new();
            p.open_file(Path::new(rel))
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            assert_eq!(s, content);
            let mut s = String::new();
            File::from(p.open_by_components(Path::new(rel)).unwrap())
                .read_to_string(&mut s)
                .unwrap();
            assert_eq!(s, content);
            assert_eq!(p.read(Path::new(rel)).unwrap(), content.as_bytes());
        }
        assert_eq!(
            p.files().unwrap(),
            [PathBuf::from("a.txt"), PathBuf::from("sub/b.txt")]
        );
    }

    /// The opener refuses a linked directory and a linked file at every depth, also where the
    /// walk never looked (a link made after the walk), with openat2 and without.
    #[test]
    fn opening_through_a_link_is_refused_naming_the_link() {
        let (t, root) = tree();
        symlink(t.path().join("outside"), root.join("linkdir")).unwrap();
        symlink(t.path().join("outside"), root.join("sub/linkdir")).unwrap();
        symlink(
            t.path().join("outside/secret.txt"),
            root.join("sub/linkfile"),
        )
        .unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let p = Project::open(&root).unwrap();
        let opener = Project::open(&root).unwrap().into_opener();
        for (rel, link) in [
            ("linkdir/secret.txt", "linkdir"),
            ("sub/linkdir/secret.txt", "sub/linkdir"),
            ("sub/linkfile", "sub/linkfile"),
            ("loop", "loop"),
            ("loop/x", "loop"),
        ] {
            let e = p.open_file(Path::new(rel)).unwrap_err();
            assert_eq!(refused_path(&e), Some(root.join(link)), "{rel}: {e}");
            let e = p.open_by_components(Path::new(rel)).unwrap_err();
            assert_eq!(refused_path(&e), Some(root.join(link)), "{rel}: {e}");
            let e = opener(&root.join(rel)).unwrap_err();
            assert_eq!(refused_path(&e), Some(root.join(link)), "{rel}: {e}");
        }
        assert!(opener(&t.path().join("outside/secret.txt")).is_err());
        assert!(p.open_file(Path::new("../outside/secret.txt")).is_err());
        assert!(p.open_file(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn directories_and_fifos_are_not_opened_as_files() {
        let (_t, root) = tree();
        let fifo = root.join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let p = Project::open(&root).unwrap();
        // Without O_NONBLOCK this open would wait for a writer forever.
        let e = p.open_file(Path::new("pipe")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = p.open_file(Path::new("sub")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // The walk skips the FIFO.
        assert_eq!(p.files().unwrap().len(), 2);
    }

    #[test]
    fn the_walk_refuses_a_link_anywhere() {
        let (t, root) = tree();
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        symlink(t.path().join("outside"), root.join("sub/deeper/zz")).unwrap();
        let p = Project::open(&root).unwrap();
        let e = p.files().unwrap_err();
        let refused = e.downcast_ref::<SymlinkRefused>().unwrap();
        assert_eq!(refused.0, root.join("sub/deeper/zz"));
    }

    #[test]
    fn a_linked_project_directory_is_followed() {
        let (t, root) = tree();
        let link = t.path().join("project-link");
        symlink(&root, &link).unwrap();
        let p = Project::open(&link).unwrap();
        assert_eq!(p.files().unwrap().len(), 2);
        assert!(p.read(Path::new("sub/b.txt")).is_ok());
    }

    #[test]
    fn named_files_must_not_be_links() {
        let (t, root) = tree();
        let link = t.path().join("x.credential.json");
        symlink(root.join("a.txt"), &link).unwrap();
        let e = open_named_file(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_named_file(&root.join("a.txt")).is_ok());
        let e = open_named_file(&root.join("sub")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // A link on the way (not the file itself) is the user's choice.
        symlink(&root, t.path().join("root-link")).unwrap();
        assert!(open_named_file(&t.path().join("root-link/a.txt")).is_ok());
    }
}
