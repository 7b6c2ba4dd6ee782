//! Sign-in sessions of the admin page, kept in memory: a session id (the cookie's value) maps
//! to the bearer token it signed in with, its CSRF token, when it was last used, and a notice
//! to show on the next page. Nothing is written to disk, so a restart signs everyone out.
//!
//! The token is kept, not the principal: every request authenticates it again, exactly as an
//! API request does, so a revoked token or a changed grant takes effect on the next page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A session unused for this long is over.
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// At most this many sessions at once: a sign-in beyond it first drops expired ones, then is
/// refused (memory stays bounded whatever signs in).
const MAX_SESSIONS: usize = 10_000;

/// The name of the session cookie.
pub const COOKIE: &str = "flowpack_session";

/// The name of the cookie that carries the sign-in form's CSRF token before any session.
pub const SIGN_IN_COOKIE: &str = "flowpack_sign_in";

/// What a page says once, after an action redirected to it.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The action succeeded.
    pub ok: bool,
    /// What to say (never a secret).
    pub text: String,
}

struct Session {
    token: Zeroizing<String>,
    csrf: String,
    seen: Instant,
    notice: Option<Notice>,
}

/// A signed-in session as a request sees it.
#[derive(Debug)]
pub struct Current {
    /// The cookie's value.
    pub id: String,
    /// The bearer token it signed in with.
    pub token: Zeroizing<String>,
    /// The CSRF token every form of the session carries.
    pub csrf: String,
    /// A notice left by the previous action, taken.
    pub notice: Option<Notice>,
}

/// The sessions of one receiver.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// 32 random bytes as URL-safe base64 (no padding).
pub fn random_token() -> Option<String> {
    use base64::Engine;
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// Whether `given` equals `expected`, in constant time.
pub fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a map that is still consistent (every change
        // is one insert or remove).
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session for `token`; its id, or `None` when no randomness could be had or
    /// too many sessions are open.
    pub fn start(&self, token: Zeroizing<String>, now: Instant) -> Option<String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| now.saturating_duration_since(s.seen) < IDLE);
            if map.len() >= MAX_SESSIONS {
                return None;
            }
        }
        map.insert(
            id.clone(),
            Session {
                token,
                csrf,
                seen: now,
                notice: None,
            },
        );
        Some(id)
    }

    /// The session `id`, if it exists and has not been idle for [`IDLE`]; marks it used and
    /// takes its notice. An expired one is removed.
    pub fn get(&self, id: &str, now: Instant) -> Option<Current> {
        let mut map = self.lock();
        let s = map.get_mut(id)?;
        if now.saturating_duration_since(s.seen) >= IDLE {
            map.remove(id);
            return None;
        }
        s.seen = now;
        Some(Current {
            id: id.to_owned(),
            token: s.token.clone(),
            csrf: s.csrf.clone(),
            notice: s.notice.take(),
        })
    }

    /// Leaves `notice` for the session's next page.
    pub fn notify(&self, id: &str, notice: Notice) {
        if let Some(s) = self.lock().get_mut(id) {
            s.notice = Some(notice);
        }
    }

    /// Ends session `id` (sign-out, or a token no longer valid).
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_after_being_idle_and_ends_on_sign_out() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let id = s.start(Zeroizing::new("tok".into()), t0).unwrap();
        let got = s.get(&id, t0 + IDLE / 2).unwrap();
        assert_eq!(got.token.as_str(), "tok");
        // Used at IDLE/2: still alive just under IDLE after that.
        assert!(
            s.get(&id, t0 + IDLE / 2 + IDLE - Duration::from_secs(1))
                .is_some()
        );
        assert!(s.get(&id, t0 + 3 * IDLE).is_none());
        // Gone for good once expired.
        assert!(s.get(&id, t0 + 3 * IDLE).is_none());

        let id = s.start(Zeroizing::new("tok".into()), t0).unwrap();
        s.end(&id);
        assert!(s.get(&id, t0).is_none());
    }

    #[test]
    fn a_notice_is_shown_once_and_tokens_are_compared_whole() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let id = s.start(Zeroizing::new("tok".into()), t0).unwrap();
        s.notify(
            &id,
            Notice {
                ok: true,
                text: "saved".into(),
            },
        );
        assert_eq!(s.get(&id, t0).unwrap().notice.unwrap().text, "saved");
        assert!(s.get(&id, t0).unwrap().notice.is_none());
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("ab", "abc"));
        assert!(!same("", "abc"));
    }
}
