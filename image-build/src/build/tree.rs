//! An image's file tree as its layers leave it, without unpacking: what
//! each path is (directory, file and its mode, symlink and its target),
//! after whiteouts and opaque directories. The build resolves an image
//! unit's program in it as the runtime's `execve` will in the unpacked
//! root, so a command the image does not have fails the build instead of
//! every start of the unit.

use std::collections::BTreeMap;

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File {
        mode: u32,
    },
    Symlink(Vec<u8>),
    /// A device, FIFO or socket: never an executable.
    Other,
}

#[derive(Debug, Clone)]
struct Entry {
    node: Node,
    layer: usize,
}

/// Paths are relative to the root, without a leading or trailing `/`
/// (the root itself is the empty path and always a directory), as
/// `berth_bundles::apply::read_entry` cleans them.
#[derive(Debug, Clone, Default)]
pub struct ImageTree {
    entries: BTreeMap<Vec<u8>, Entry>,
}

/// What resolving a path found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The path names this node (symlinks followed).
    Node(Node),
    /// A component is missing, or is not a directory where one must be.
    Missing,
    /// More than [`MAX_LINKS`] symlinks, or a loop.
    TooManyLinks,
}

/// Why the unpacker would refuse to create an entry where the tree says it
/// goes (`berth_bundles::apply`): the build refuses the image for it,
/// rather than every start of its units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The parent, or a component on the way, is not a directory.
    ParentNotDir,
    /// The parent is, or goes through, a symlink to nothing.
    DanglingParent,
    /// More than [`MAX_LINKS`] symlinks on the way, or a loop.
    TooManyLinks,
}

/// Why a hardlink's target cannot be linked (the unpacker's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTarget {
    Missing,
    Directory,
    TooManyLinks,
}

/// The kernel's limit on symlinks followed in one lookup (`MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

fn under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

impl ImageTree {
    /// Removes `path` and everything below it.
    fn remove_tree(&mut self, path: &[u8]) {
        let doomed: Vec<Vec<u8>> = self
            .entries
            .range(path.to_vec()..)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| p.as_slice() == path || under(p, path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.entries.remove(&p);
        }
    }

    /// An entry of layer `layer` creates `node` at `path`. Its parent is
    /// resolved in the tree as the unpacker resolves it in the root
    /// (symlinks followed, missing directories made); a directory over a
    /// directory keeps what is below it, anything else replaces the old
    /// path and its subtree. An entry whose parent is not a directory is
    /// left out (the unpacker refuses it at boot).
    /// Returns the path the entry landed at (its parent resolved).
    pub fn create(
        &mut self,
        path: &[u8],
        node: Node,
        layer: usize,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let Some((parent, name)) = split_last(path) else {
            // The root: always a directory.
            return Ok(None);
        };
        let full = join(&self.make_parent(parent, layer)?, name);
        let keep_below = node == Node::Dir
            && matches!(
                self.entries.get(&full),
                Some(Entry {
                    node: Node::Dir,
                    ..
                })
            );
        if !keep_below {
            self.remove_tree(&full);
        }
        self.entries.insert(full.clone(), Entry { node, layer });
        Ok(Some(full))
    }

    /// The node a hardlink to `path` links, as the unpacker finds it: the
    /// parent resolved through symlinks, the last component not followed
    /// (a link to a symlink links the symlink).
    pub fn link_target(&self, path: &[u8]) -> Result<(Vec<u8>, Node), LinkTarget> {
        let (parent, name) = split_last(path).ok_or(LinkTarget::Directory)?;
        let dir = match self.walk(parent) {
            Walk::Found(dir, Node::Dir) => dir,
            Walk::TooManyLinks => return Err(LinkTarget::TooManyLinks),
            _ => return Err(LinkTarget::Missing),
        };
        let at = join(&dir, name);
        match self.entries.get(&at).map(|e| &e.node) {
            None => Err(LinkTarget::Missing),
            Some(Node::Dir) => Err(LinkTarget::Directory),
            Some(node) => Ok((at, node.clone())),
        }
    }

    /// `.wh.NAME`: `path` (the parent joined with NAME) goes, with its
    /// subtree. A missing parent, or one that is a file, hides nothing; a
    /// symlink loop on the way is refused, as the unpacker refuses it.
    pub fn whiteout(&mut self, path: &[u8], layer: usize) -> Result<(), Refusal> {
        let Some((parent, name)) = split_last(path) else {
            return Ok(());
        };
        if let Some(dir) = self.marker_dir(parent)? {
            let path = join(&dir, name);
            self.remove_lower(&path, |p| p == path.as_slice() || under(p, &path), layer);
        }
        Ok(())
    }

    /// `.wh..wh..opq` in `dir`: what lower layers put below `dir` goes
    /// (as for [`Self::whiteout`], a loop on the way is refused).
    pub fn opaque(&mut self, dir: &[u8], layer: usize) -> Result<(), Refusal> {
        if let Some(dir) = self.marker_dir(dir)? {
            self.remove_lower(&dir, |p| under(p, &dir), layer);
        }
        Ok(())
    }

    /// The directory a whiteout or opaque marker acts in, if there is one.
    fn marker_dir(&self, dir: &[u8]) -> Result<Option<Vec<u8>>, Refusal> {
        match self.walk(dir) {
            Walk::Found(path, Node::Dir) => Ok(Some(path)),
            Walk::TooManyLinks => Err(Refusal::TooManyLinks),
            _ => Ok(None),
        }
    }

    /// Removes the paths at or below `top` that `doomed` selects, but for
    /// what layer `layer` itself created and their ancestors: the
    /// unpacker's whiteouts and opaque markers remove only what lower
    /// layers left (its per-layer set `U`), in whatever order the layer's
    /// entries come.
    fn remove_lower(&mut self, top: &[u8], doomed: impl Fn(&[u8]) -> bool, layer: usize) {
        let selected: Vec<(Vec<u8>, bool)> = self
            .entries
            .range(top.to_vec()..)
            .take_while(|(p, _)| p.starts_with(top))
            .filter(|(p, _)| doomed(p))
            .map(|(p, e)| (p.clone(), e.layer == layer))
            .collect();
        let keep: Vec<&[u8]> = selected
            .iter()
            .filter(|(_, own)| *own)
            .map(|(p, _)| p.as_slice())
            .collect();
        for (p, _) in &selected {
            if !keep.iter().any(|k| *k == p.as_slice() || under(k, p)) {
                self.entries.remove(p);
            }
        }
    }

    /// The directory `dir` names, symlinks followed, its missing
    /// components made directories of `layer` as the unpacker makes them;
    /// what the unpacker refuses is refused.
    fn make_parent(&mut self, dir: &[u8], layer: usize) -> Result<Vec<u8>, Refusal> {
        loop {
            match self.walk(dir) {
                Walk::Found(path, Node::Dir) => return Ok(path),
                Walk::Found(..) | Walk::NotDir => return Err(Refusal::ParentNotDir),
                // A name of the entry's own path: made, one per round.
                Walk::Missing(path, false) => {
                    self.entries.insert(
                        path,
                        Entry {
                            node: Node::Dir,
                            layer,
                        },
                    );
                }
                // What a symlink on the way points to is not there.
                Walk::Missing(_, true) => return Err(Refusal::DanglingParent),
                Walk::TooManyLinks => return Err(Refusal::TooManyLinks),
            }
        }
    }

    /// Resolves an absolute path as the kernel does in the unpacked root:
    /// `.` and `..` (never above the root), symlinks in every component,
    /// absolute targets from the root, relative ones from the link's
    /// directory.
    pub fn resolve(&self, path: &[u8]) -> Found {
        match self.walk(path) {
            Walk::Found(_, node) => Found::Node(node),
            Walk::Missing(..) | Walk::NotDir => Found::Missing,
            Walk::TooManyLinks => Found::TooManyLinks,
        }
    }

    /// Where an absolute path leads when it names a regular file: the
    /// file's own path (symlinks followed as [`ImageTree::resolve`]
    /// follows them) and its node.
    pub fn locate_file(&self, path: &[u8]) -> Option<(Vec<u8>, Node)> {
        match self.walk(path) {
            Walk::Found(at, node @ Node::File { .. }) => Some((at, node)),
            _ => None,
        }
    }

    /// The walk behind [`ImageTree::resolve`] and the parent lookups,
    /// with the path it ends at.
    fn walk(&self, path: &[u8]) -> Walk {
        let mut links = 0;
        // The components still to walk, last one first, each with whether
        // it came from a symlink's target.
        let mut todo: Vec<(Vec<u8>, bool)> =
            split(path).into_iter().rev().map(|c| (c, false)).collect();
        let mut at: Vec<Vec<u8>> = Vec::new();
        while let Some((name, from_link)) = todo.pop() {
            match name.as_slice() {
                b"." => continue,
                b".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            at.push(name);
            let joined = at.join(&b'/');
            match self.entries.get(&joined).map(|e| &e.node) {
                None => return Walk::Missing(joined, from_link),
                Some(Node::Symlink(target)) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Walk::TooManyLinks;
                    }
                    at.pop();
                    if target.starts_with(b"/") {
                        at.clear();
                    }
                    todo.extend(split(target).into_iter().rev().map(|c| (c, true)));
                }
                Some(Node::Dir) => {}
                Some(node) if todo.is_empty() => return Walk::Found(joined, node.clone()),
                Some(_) => return Walk::NotDir,
            }
        }
        Walk::Found(at.join(&b'/'), Node::Dir)
    }
}

/// Where a walk ended: the path it names (symlinks followed) and what is
/// there, the first missing component (and whether a symlink's target
/// named it), a non-directory in the middle, or too many links.
enum Walk {
    Found(Vec<u8>, Node),
    Missing(Vec<u8>, bool),
    NotDir,
    TooManyLinks,
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`); `None` for the root.
fn split_last(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.is_empty() {
        return None;
    }
    Some(match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    })
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    [dir, b"/", name].concat()
}

fn split(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32) -> Node {
        Node::File { mode }
    }

    fn link(target: &str) -> Node {
        Node::Symlink(target.as_bytes().to_vec())
    }

    /// A merged-/usr busybox image: /bin -> usr/bin, applets linking to
    /// busybox.
    fn busybox() -> ImageTree {
        let mut t = ImageTree::default();
        t.create(b"usr/bin/busybox", file(0o755), 0).unwrap();
        t.create(b"usr/bin/sh", link("busybox"), 0).unwrap();
        t.create(b"usr/bin/abs", link("/usr/bin/busybox"), 0)
            .unwrap();
        t.create(b"bin", link("usr/bin"), 0).unwrap();
        t.create(b"etc/passwd", file(0o644), 0).unwrap();
        t.create(b"loop", link("loop"), 0).unwrap();
        t
    }

    #[test]
    fn paths_resolve_through_links_as_the_kernel_resolves_them() {
        let t = busybox();
        for path in [
            "/usr/bin/busybox",
            "/bin/sh",
            "/bin/abs",
            "/bin/../bin/./sh",
            "/../../bin/sh",
            "//usr//bin/sh/",
        ] {
            assert_eq!(
                t.resolve(path.as_bytes()),
                Found::Node(file(0o755)),
                "{path}"
            );
        }
        assert_eq!(t.resolve(b"/bin"), Found::Node(Node::Dir));
        assert_eq!(t.resolve(b"/"), Found::Node(Node::Dir));
        assert_eq!(t.resolve(b"/bin/nope"), Found::Missing);
        assert_eq!(t.resolve(b"/etc/passwd/x"), Found::Missing);
        assert_eq!(t.resolve(b"/loop"), Found::TooManyLinks);
        // Implicit parents are directories.
        assert_eq!(t.resolve(b"/usr"), Found::Node(Node::Dir));
    }

    /// What the unpacker refuses to create, the tree refuses too, so the
    /// build fails instead of every start of the unit.
    #[test]
    fn parents_and_hardlink_targets_are_judged_as_the_unpacker_judges_them() {
        let mut t = busybox();
        // Missing parents of the entry's own path are made, through a
        // symlink on the way too.
        t.create(b"opt/app/bin/tool", file(0o755), 1).unwrap();
        t.create(b"bin/sub/tool", file(0o755), 1).unwrap();
        assert_eq!(t.resolve(b"/usr/bin/sub/tool"), Found::Node(file(0o755)));
        // A parent that is, or goes through, a symlink to nothing.
        t.create(b"gone", link("/nowhere"), 1).unwrap();
        assert_eq!(
            t.create(b"gone/x", file(0o644), 1),
            Err(Refusal::DanglingParent)
        );
        t.create(b"half", link("usr/nothing/here"), 1).unwrap();
        assert_eq!(
            t.create(b"half/x", file(0o644), 1),
            Err(Refusal::DanglingParent)
        );
        assert_eq!(t.resolve(b"/nowhere"), Found::Missing);
        assert_eq!(
            t.create(b"loop/x", file(0o644), 1),
            Err(Refusal::TooManyLinks)
        );
        // Hardlink targets: the parent followed, the last name not.
        assert_eq!(
            t.link_target(b"bin/busybox"),
            Ok((b"usr/bin/busybox".to_vec(), file(0o755)))
        );
        assert_eq!(
            t.link_target(b"usr/bin/sh"),
            Ok((b"usr/bin/sh".to_vec(), link("busybox")))
        );
        assert_eq!(
            t.link_target(b"gone"),
            Ok((b"gone".to_vec(), link("/nowhere")))
        );
        assert_eq!(t.link_target(b"missing/target"), Err(LinkTarget::Missing));
        assert_eq!(t.link_target(b"usr/bin/nope"), Err(LinkTarget::Missing));
        assert_eq!(t.link_target(b"usr/bin"), Err(LinkTarget::Directory));
        assert_eq!(t.link_target(b"loop/x"), Err(LinkTarget::TooManyLinks));
        // Whiteouts and opaque markers: a loop on the way is refused (the
        // unpacker's ELOOP); a missing, dangling or file parent hides
        // nothing and is no error.
        assert_eq!(t.whiteout(b"loop/x", 2), Err(Refusal::TooManyLinks));
        assert_eq!(t.opaque(b"loop", 2), Err(Refusal::TooManyLinks));
        for parent in [&b"missing"[..], b"gone", b"bin/busybox"] {
            let mut path = parent.to_vec();
            path.extend_from_slice(b"/x");
            assert_eq!(t.whiteout(&path, 2), Ok(()));
            assert_eq!(t.opaque(parent, 2), Ok(()));
        }
    }

    #[test]
    fn whiteouts_and_opaque_directories_remove_lower_layers_paths() {
        let mut t = busybox();
        t.whiteout(b"usr/bin/sh", 1).unwrap();
        assert_eq!(t.resolve(b"/bin/sh"), Found::Missing);
        assert_eq!(t.resolve(b"/bin/busybox"), Found::Node(file(0o755)));
        t.create(b"usr/bin/new", file(0o700), 1).unwrap();
        t.opaque(b"usr/bin", 1).unwrap();
        assert_eq!(t.resolve(b"/bin/busybox"), Found::Missing);
        assert_eq!(t.resolve(b"/bin/new"), Found::Node(file(0o700)));
        // A file over a directory takes its subtree with it.
        t.create(b"usr", file(0o644), 2).unwrap();
        assert_eq!(t.resolve(b"/bin/new"), Found::Missing);
        // A directory over a directory keeps it.
        let mut t = busybox();
        t.create(b"usr/bin", Node::Dir, 1).unwrap();
        assert_eq!(t.resolve(b"/bin/sh"), Found::Node(file(0o755)));
        // An entry below a file is refused, as the unpacker refuses it.
        assert_eq!(
            t.create(b"etc/passwd/x", file(0o755), 2),
            Err(Refusal::ParentNotDir)
        );
        assert_eq!(t.resolve(b"/etc/passwd/x"), Found::Missing);
    }

    #[test]
    fn a_layers_markers_spare_what_the_layer_itself_made() {
        // Entries come in any order within a layer; its whiteouts and
        // opaque markers remove only lower layers' paths, keeping this
        // layer's and their ancestors, as the unpacker does.
        let mut t = busybox();
        t.create(b"usr/bin/tool", file(0o755), 1).unwrap();
        t.create(b"etc/app/conf", file(0o644), 1).unwrap();
        t.whiteout(b"usr/bin/tool", 1).unwrap();
        t.whiteout(b"etc", 1).unwrap();
        t.opaque(b"usr", 1).unwrap();
        assert_eq!(t.resolve(b"/usr/bin/tool"), Found::Node(file(0o755)));
        assert_eq!(t.resolve(b"/etc/app/conf"), Found::Node(file(0o644)));
        // Lower layers' paths beside them are gone.
        assert_eq!(t.resolve(b"/etc/passwd"), Found::Missing);
        assert_eq!(t.resolve(b"/usr/bin/busybox"), Found::Missing);
        assert_eq!(t.resolve(b"/usr/bin"), Found::Node(Node::Dir));
        // The next layer's whiteout removes them.
        t.whiteout(b"usr/bin", 2).unwrap();
        assert_eq!(t.resolve(b"/usr/bin/tool"), Found::Missing);
        assert_eq!(t.resolve(b"/usr"), Found::Node(Node::Dir));
    }

    #[test]
    fn entries_below_a_symlinked_directory_land_where_it_points() {
        let mut t = busybox();
        // A later layer's bin/tool, bin being a link to usr/bin.
        t.create(b"bin/tool", file(0o755), 1).unwrap();
        assert_eq!(t.resolve(b"/usr/bin/tool"), Found::Node(file(0o755)));
        assert_eq!(t.resolve(b"/bin"), Found::Node(Node::Dir));
        // Whiteouts and opaque markers follow it too.
        t.whiteout(b"bin/tool", 2).unwrap();
        assert_eq!(t.resolve(b"/usr/bin/tool"), Found::Missing);
        t.opaque(b"bin", 3).unwrap();
        assert_eq!(t.resolve(b"/usr/bin/busybox"), Found::Missing);
        // Missing parents are made.
        t.create(b"opt/app/run", file(0o755), 4).unwrap();
        assert_eq!(t.resolve(b"/opt/app/run"), Found::Node(file(0o755)));
    }
}
