//! Stored responses: what `store` keeps for `GET /v1/responses/{id}` and for a later turn's
//! `previous_response_id`, in memory, bounded by count and by bytes (the oldest go first).

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
    /// Keeps `response` (its `id` names it) and the conversation it ended.
    pub(crate) fn put(&self, response: Json, conversation: Vec<Message>) {
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
            },
        );
    }

    /// The stored response `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Stored> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_id.get(id).cloned()
    }

    /// Forgets `id`; false when it was not stored.
    pub(crate) fn delete(&self, id: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
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
            store.put(serde_json::json!({"id": format!("resp_{i}")}), Vec::new());
        }
        assert!(store.get("resp_0").is_none() && store.get("resp_1").is_none());
        assert!(store.get("resp_2").is_some());
        assert!(store.delete("resp_2") && !store.delete("resp_2"));
    }
}
