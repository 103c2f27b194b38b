//! Stored responses: what `store` keeps for `GET /v1/responses/{id}` and for a later turn's
//! `previous_response_id`, in memory, bounded by count and by bytes (the oldest go first).
//! Each is kept under the scope of the API key that made it: another key neither sees,
//! continues nor deletes it (as the prefix cache keeps keys apart).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value as Json;

use crate::chat::Message;

/// Responses kept at most.
const MAX_STORED: usize = 1024;

/// Bytes of stored JSON kept at most (responses and conversations).
const MAX_BYTES: usize = 64 << 20;

/// One stored response.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// The response object as answered.
    pub(crate) response: Json,
    /// The conversation it ended (without instructions), its answer included.
    pub(crate) conversation: Vec<Message>,
    bytes: usize,
    scope: u64,
}

/// The store, shared by every connection.
#[derive(Debug, Default)]
pub(crate) struct ResponseStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Stored>,
    order: VecDeque<String>,
    bytes: usize,
}

impl ResponseStore {
    /// Keeps `response` (its `id` names it) and the conversation it ended, for the key
    /// of scope `scope`.
    pub(crate) fn put(&self, response: Json, conversation: Vec<Message>, scope: u64) {
        let Some(id) = response["id"].as_str().map(str::to_string) else {
            return;
        };
        let bytes = response.to_string().len() + serde_json::to_string(&conversation).map_or(0, |s| s.len());
        if bytes > MAX_BYTES {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while inner.order.len() >= MAX_STORED || inner.bytes + bytes > MAX_BYTES {
            let Some(old) = inner.order.pop_front() else { break };
            if let Some(gone) = inner.by_id.remove(&old) {
                inner.bytes -= gone.bytes;
            }
        }
        inner.bytes += bytes;
        inner.order.push_back(id.clone());
        inner.by_id.insert(
            id,
            Stored {
                response,
                conversation,
                bytes,
                scope,
            },
        );
    }

    /// The stored response `id`, when the key of scope `scope` made it.
    pub(crate) fn get(&self, id: &str, scope: u64) -> Option<Stored> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_id.get(id).filter(|s| s.scope == scope).cloned()
    }

    /// Forgets `id`; false when the key of scope `scope` has no such response.
    pub(crate) fn delete(&self, id: &str, scope: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_id.get(id).is_none_or(|s| s.scope != scope) {
            return false;
        }
        match inner.by_id.remove(id) {
            Some(gone) => {
                inner.bytes -= gone.bytes;
                inner.order.retain(|o| o != id);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first() {
        let store = ResponseStore::default();
        for i in 0..MAX_STORED + 2 {
            store.put(serde_json::json!({"id": format!("resp_{i}")}), Vec::new(), 0);
        }
        assert!(store.get("resp_0", 0).is_none() && store.get("resp_1", 0).is_none());
        assert!(store.get("resp_2", 0).is_some());
        assert!(store.delete("resp_2", 0) && !store.delete("resp_2", 0));
    }

    #[test]
    fn another_key_neither_sees_nor_deletes() {
        let store = ResponseStore::default();
        store.put(serde_json::json!({"id": "resp_a"}), Vec::new(), 7);
        assert!(store.get("resp_a", 8).is_none() && !store.delete("resp_a", 8));
        assert!(store.get("resp_a", 7).is_some() && store.delete("resp_a", 7));
    }
}
