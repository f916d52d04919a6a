//! Which of a tab's WebSockets is the site's update socket, and whether one is open.
//!
//! A page opens its update socket from its own script, which may run after its prompt box
//! shows; a prompt sent before the socket is open relies on the site to replay what was
//! said meanwhile. The tab's pump feeds this book the page's WebSocket events (created,
//! handshake answered, frame, closed) and its documents, and publishes whether an update
//! socket is open, so a send can wait for it (`site::poe::driver`). The pump reads each
//! kind of event from its own stream, so the events of one socket may come out of order:
//! a handshake or a frame seen before the socket's creation counts once the creation says
//! it is the update socket. A page whose update socket closed and did not open another is
//! told from one whose socket is still to come: a send opens that page again.

use std::collections::{HashMap, HashSet};

/// The update socket of a tab's current document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    /// None was open on this document yet.
    NotYet,
    /// One is open.
    Open,
    /// One was open and closed, and none is open now.
    Lost,
}

/// How many sockets whose handshake came before their creation are remembered.
const EARLY_LIMIT: usize = 64;

/// The tab's WebSockets by DevTools request id.
#[derive(Debug, Default)]
pub struct UpdateSockets {
    /// Sockets whose creation was seen: whether each is the update socket.
    kind: HashMap<String, bool>,
    /// Update sockets open now (handshake answered, or a frame came).
    open: HashSet<String>,
    /// Sockets that answered (or brought a frame) before their creation was seen.
    early: HashSet<String>,
    /// An update socket was open on this document.
    was_open: bool,
}

impl UpdateSockets {
    /// A socket was created; `is_update` from its URL.
    pub fn created(&mut self, id: &str, is_update: bool) {
        self.kind.insert(id.to_owned(), is_update);
        if self.early.remove(id) && is_update {
            self.open.insert(id.to_owned());
            self.was_open = true;
        }
    }

    /// A socket's handshake was answered (or a frame came on it): it is open.
    pub fn answered(&mut self, id: &str) {
        match self.kind.get(id) {
            Some(true) => {
                // Called for every frame: no new key unless it is new.
                if !self.open.contains(id) {
                    self.open.insert(id.to_owned());
                    self.was_open = true;
                }
            }
            Some(false) => {}
            None => {
                if self.early.len() >= EARLY_LIMIT {
                    self.early.clear();
                }
                self.early.insert(id.to_owned());
            }
        }
    }

    /// Whether frames of this socket are to be read: any socket but one known to be another
    /// (non-updates are ignored by the parser anyway).
    pub fn is_read(&self, id: &str) -> bool {
        self.kind.get(id) != Some(&false)
    }

    /// A socket closed; true when it was the update socket.
    pub fn closed(&mut self, id: &str) -> bool {
        self.open.remove(id);
        self.early.remove(id);
        self.kind.remove(id) == Some(true)
    }

    /// The main frame holds a new document: the sockets of the one before are gone with it,
    /// whether or not their closing was reported.
    pub fn new_document(&mut self) {
        self.kind.clear();
        self.open.clear();
        self.early.clear();
        self.was_open = false;
    }

    /// The update socket of the current document.
    pub fn state(&self) -> SocketState {
        if !self.open.is_empty() {
            SocketState::Open
        } else if self.was_open {
            SocketState::Lost
        } else {
            SocketState::NotYet
        }
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.state() == SocketState::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_socket_is_open_from_its_handshake_until_it_closes() {
        let mut s = UpdateSockets::default();
        s.created("1", true);
        assert!(!s.is_open(), "created is not open yet");
        s.answered("1");
        assert!(s.is_open());
        assert!(s.closed("1"));
        assert_eq!(s.state(), SocketState::Lost, "closed, none open");
        s.created("2", true);
        assert_eq!(s.state(), SocketState::Lost, "a new one is not open yet");
        s.answered("2");
        assert_eq!(s.state(), SocketState::Open, "the page connected again");
    }

    #[test]
    fn other_sockets_never_count_and_their_frames_are_not_read() {
        let mut s = UpdateSockets::default();
        s.created("noise", false);
        s.answered("noise");
        assert!(!s.is_open());
        assert!(!s.is_read("noise"));
        assert!(!s.closed("noise"));
        assert!(
            s.is_read("never-seen"),
            "a socket whose creation was not seen is read"
        );
    }

    #[test]
    fn a_handshake_seen_before_the_creation_counts_once_the_creation_comes() {
        let mut s = UpdateSockets::default();
        s.answered("1");
        assert!(!s.is_open(), "not known to be the update socket yet");
        s.created("1", true);
        assert!(s.is_open());
        s.answered("2");
        s.created("2", false);
        assert!(s.closed("1"));
        assert!(
            !s.is_open(),
            "the other socket's early handshake does not count"
        );
    }

    #[test]
    fn a_new_document_forgets_the_sockets_of_the_one_before() {
        let mut s = UpdateSockets::default();
        s.created("1", true);
        s.answered("1");
        s.new_document();
        assert_eq!(s.state(), SocketState::NotYet);
        // Its closing, reported late, changes nothing; the new page's socket counts.
        assert!(!s.closed("1"));
        s.created("2", true);
        s.answered("2");
        assert!(s.is_open());
    }

    #[test]
    fn early_handshakes_are_bounded() {
        let mut s = UpdateSockets::default();
        for i in 0..(EARLY_LIMIT * 3) {
            s.answered(&i.to_string());
        }
        assert!(s.early.len() <= EARLY_LIMIT);
    }
}
