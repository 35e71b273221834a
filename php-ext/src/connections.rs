//! Open database connections of this worker, for its scoreboard slot
//! (`sonde_core::scoreboard::S_DB_CONNECTIONS`). PHP-free: the plugins
//! report connects and closes, the module asks whether an object still
//! lives and how many persistent connections the process holds.
//!
//! Two kinds are counted. Persistent connections (PDO's
//! `ATTR_PERSISTENT`, `pg_pconnect`, idle `p:` mysqli links) outlive
//! requests: the process's persistent list says how many there are.
//! Non-persistent ones live as long as their PHP object: the objects the
//! plugins saw connect in this request are kept here (no allocation, at most
//! `MAX` of them) and count while the object lives (and, for mysqli, while
//! the link is open). The count is updated when a connection is opened or
//! closed and at request end, never per query.

/// Connection objects tracked per request.
pub const MAX: usize = 64;

/// Which library a tracked connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Pdo,
    Mysqli,
    Pgsql,
}

/// One connection object: its address, object handle and library.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conn {
    pub obj: usize,
    pub handle: u32,
    pub kind: Kind,
}

/// The connection objects of the current request.
#[derive(Debug)]
pub struct Connections {
    live: [Conn; MAX],
    len: usize,
    /// The count last written to the scoreboard.
    pub published: Option<u32>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            live: [Conn::default(); MAX],
            len: 0,
            published: None,
        }
    }
}

impl Connections {
    /// A connection object opened (once per object; beyond `MAX`, ignored).
    pub fn opened(&mut self, c: Conn) {
        if self.live[..self.len].iter().any(|x| x.obj == c.obj) {
            return;
        }
        if self.len < MAX {
            self.live[self.len] = c;
            self.len += 1;
        }
    }

    /// A connection was closed explicitly: `obj`, or, when None, the last
    /// one of `kind` (`pg_close()` without a link closes the default, the
    /// last opened).
    pub fn closed(&mut self, obj: Option<usize>, kind: Kind) {
        let at = match obj {
            Some(o) => self.live[..self.len].iter().position(|x| x.obj == o),
            None => self.live[..self.len].iter().rposition(|x| x.kind == kind),
        };
        if let Some(i) = at {
            self.live.copy_within(i + 1..self.len, i);
            self.len -= 1;
        }
    }

    /// Open connections: `persistent` plus the tracked objects `alive`
    /// says are still open.
    pub fn count(&self, persistent: u32, alive: impl Fn(&Conn) -> bool) -> u32 {
        persistent + self.live[..self.len].iter().filter(|c| alive(c)).count() as u32
    }

    /// The request ended: its objects are freed now.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// `n` if it differs from what was last published (then remembered).
    pub fn changed(&mut self, n: u32) -> Option<u32> {
        if self.published == Some(n) {
            return None;
        }
        self.published = Some(n);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(obj: usize, kind: Kind) -> Conn {
        Conn {
            obj,
            handle: obj as u32,
            kind,
        }
    }

    #[test]
    fn counts_live_objects_and_persistent_ones() {
        let mut c = Connections::default();
        c.opened(conn(1, Kind::Pdo));
        c.opened(conn(1, Kind::Pdo)); // the same object again
        c.opened(conn(2, Kind::Pgsql));
        c.opened(conn(3, Kind::Pgsql));
        c.opened(conn(4, Kind::Mysqli));
        assert_eq!(c.count(2, |_| true), 6);
        // An object freed (`$db = null`) no longer counts.
        assert_eq!(c.count(2, |x| x.obj != 1), 5);
        // pg_close() without a link closes the last pgsql one.
        c.closed(None, Kind::Pgsql);
        assert_eq!(c.count(0, |_| true), 3);
        c.closed(Some(2), Kind::Pgsql);
        assert_eq!(c.count(0, |_| true), 2);
        assert_eq!(c.changed(2), Some(2));
        assert_eq!(c.changed(2), None);
        c.clear();
        assert_eq!(c.count(1, |_| true), 1);
        for i in 0..100 {
            c.opened(conn(10 + i, Kind::Mysqli));
        }
        assert_eq!(c.count(0, |_| true), MAX as u32);
    }
}
