//! The order of a peer's pipelined batches. A sender keeps several batches in flight on one
//! delivery session, numbered from 0; they may arrive in any order, but the receiver queues
//! their writes in the session's order, so per-peer order holds as if they were sent one at a
//! time. A batch waits (up to a deadline) for the ones before it; once a batch of the session
//! is refused or abandoned, every later batch of it is refused, and the sender starts again
//! from its queue's head on a new session.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::Notify;
use trm_core::ids::NodeId;

/// Sessions of a peer remembered as replaced (their late batches are refused at once).
const RETIRED: usize = 8;
/// The longest session name accepted.
pub const MAX_SESSION: usize = 64;

/// Where each peer's current session stands.
#[derive(Debug)]
pub struct Sequencer {
    peers: Mutex<HashMap<NodeId, PeerSession>>,
    changed: Notify,
    wait: Duration,
}

#[derive(Debug, Default)]
struct PeerSession {
    session: String,
    /// The next batch number whose writes may be queued.
    next: u64,
    /// The first batch that was refused or abandoned: it and every later one are refused.
    broken_at: Option<u64>,
    retired: VecDeque<String>,
}

/// Why a batch cannot take its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutOfTurn {
    #[error(
        "an earlier batch of the delivery session was refused or abandoned; start a new session"
    )]
    Broken,
    #[error("a batch of the delivery session with this number was already taken")]
    Repeated,
    #[error("the delivery session was replaced by a newer one")]
    Replaced,
    #[error("an earlier batch of the delivery session did not arrive in time")]
    Timeout,
}

enum Check {
    Ready,
    Wait,
    Refuse(OutOfTurn),
}

/// A batch's place in its session. Dropped without [`Turn::taken`], it breaks the session
/// from its number on (the batch was refused, or its request abandoned).
#[derive(Debug)]
pub struct Turn<'a> {
    seq: &'a Sequencer,
    peer: NodeId,
    session: String,
    n: u64,
    taken: bool,
}

impl Sequencer {
    /// Returns a sequencer whose batches wait at most `wait` for the ones before them.
    pub fn new(wait: Duration) -> Self {
        Self {
            peers: Mutex::default(),
            changed: Notify::new(),
            wait,
        }
    }

    /// Returns the turn of batch `n` of `peer`'s `session`; `None` for an unsequenced batch
    /// (empty session).
    pub fn turn(&self, peer: NodeId, session: &str, n: u64) -> Option<Turn<'_>> {
        (!session.is_empty()).then(|| Turn {
            seq: self,
            peer,
            session: session.to_owned(),
            n,
            taken: false,
        })
    }

    fn with<R>(&self, peer: NodeId, f: impl FnOnce(&mut PeerSession) -> R) -> R {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        f(peers.entry(peer).or_default())
    }
}

impl Turn<'_> {
    fn check(&self) -> Check {
        self.seq.with(self.peer, |p| {
            if p.retired.contains(&self.session) {
                return Check::Refuse(OutOfTurn::Replaced);
            }
            if p.session != self.session {
                if self.n != 0 {
                    // Its session has not started here yet (batch 0 may still be on its way).
                    return Check::Wait;
                }
                let old = std::mem::replace(&mut p.session, self.session.clone());
                if !old.is_empty() {
                    p.retired.push_back(old);
                    if p.retired.len() > RETIRED {
                        p.retired.pop_front();
                    }
                }
                p.next = 0;
                p.broken_at = None;
                return Check::Ready;
            }
            if p.broken_at.is_some_and(|b| self.n >= b) {
                return Check::Refuse(OutOfTurn::Broken);
            }
            match self.n.cmp(&p.next) {
                std::cmp::Ordering::Less => Check::Refuse(OutOfTurn::Repeated),
                std::cmp::Ordering::Equal => Check::Ready,
                std::cmp::Ordering::Greater => Check::Wait,
            }
        })
    }

    /// Waits until every earlier batch of the session has taken its turn.
    pub async fn wait(&self) -> Result<(), OutOfTurn> {
        let deadline = tokio::time::Instant::now() + self.seq.wait;
        loop {
            let changed = self.seq.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.check() {
                Check::Ready => return Ok(()),
                Check::Refuse(why) => return Err(why),
                Check::Wait => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(OutOfTurn::Timeout);
            }
        }
    }

    /// Marks the batch's writes as queued (after [`Turn::wait`]): the next batch of the
    /// session may go.
    pub fn taken(mut self) {
        self.taken = true;
        self.seq.with(self.peer, |p| {
            if p.session == self.session && p.next == self.n {
                p.next += 1;
            }
        });
        self.seq.changed.notify_waiters();
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        self.seq.with(self.peer, |p| {
            // A number already taken (a repeat) breaks nothing.
            if p.session == self.session && self.n >= p.next {
                p.broken_at = Some(p.broken_at.map_or(self.n, |b| b.min(self.n)));
            }
        });
        self.seq.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro() -> NodeId {
        "RO".parse().unwrap()
    }

    async fn take(s: &Sequencer, session: &str, n: u64) {
        let t = s.turn(ro(), session, n).unwrap();
        t.wait().await.unwrap();
        t.taken();
    }

    #[tokio::test]
    async fn batches_take_their_turns_in_session_order_whatever_order_they_arrive_in() {
        let s = Sequencer::new(Duration::from_secs(5));
        let order = Mutex::new(Vec::new());
        let run = |n: u64| {
            let (s, order) = (&s, &order);
            async move {
                let t = s.turn(ro(), "s1", n).unwrap();
                t.wait().await.unwrap();
                order.lock().unwrap().push(n);
                t.taken();
            }
        };
        tokio::join!(run(3), run(1), run(2), run(0));
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_refused_batch_breaks_its_session_and_a_new_session_starts_clean() {
        let s = Sequencer::new(Duration::from_secs(5));
        take(&s, "s1", 0).await;
        let refused = s.turn(ro(), "s1", 1).unwrap();
        refused.wait().await.unwrap();
        drop(refused);
        assert_eq!(
            s.turn(ro(), "s1", 2).unwrap().wait().await,
            Err(OutOfTurn::Broken)
        );
        take(&s, "s2", 0).await;
        assert_eq!(
            s.turn(ro(), "s1", 3).unwrap().wait().await,
            Err(OutOfTurn::Replaced)
        );
        assert_eq!(
            s.turn(ro(), "s2", 0).unwrap().wait().await,
            Err(OutOfTurn::Repeated)
        );
        let next = s.turn(ro(), "s2", 1).unwrap();
        assert_eq!(next.wait().await, Ok(()));
    }

    #[tokio::test]
    async fn a_batch_whose_predecessor_never_arrives_is_refused_at_the_deadline() {
        let s = Sequencer::new(Duration::from_millis(50));
        take(&s, "s1", 0).await;
        assert_eq!(
            s.turn(ro(), "s1", 2).unwrap().wait().await,
            Err(OutOfTurn::Timeout)
        );
        assert!(
            s.turn("NG".parse().unwrap(), "s1", 0).is_some(),
            "another peer has its own sessions"
        );
        assert!(s.turn(ro(), "", 7).is_none(), "unsequenced");
    }
}
