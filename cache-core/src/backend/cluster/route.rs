//! Routing a batch: its keys grouped by the master serving them and by slot within a
//! master, one pipeline per master, the masters concurrently.

use futures_util::future::join_all;
use redis::Value;

use super::slot::slot;
use super::topology::{Node, Topology};
use crate::backend::Unavailable;

/// The keys of one call that one node serves, by slot: indices into the call's keys.
pub(super) struct NodeBatch<'t> {
    pub(super) node: &'t Node,
    pub(super) slots: Vec<(u16, Vec<usize>)>,
}

impl NodeBatch<'_> {
    /// The indices of this node's keys, slot by slot.
    pub(super) fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .flat_map(|(_, indices)| indices.iter().copied())
    }

    /// Turns one reply of this node's pipeline into a value, recording a command the
    /// server refused (or a redirection, which wakes the slot map's refresh).
    pub(super) fn check(&self, reply: Value) -> Result<Value, Unavailable> {
        match reply.extract_error() {
            Ok(value) => Ok(value),
            Err(error) => {
                self.node.link.refused(&error);
                Err(Unavailable::Failed)
            }
        }
    }
}

impl Topology {
    /// Groups key indices by the node serving them, and by slot within a node; keys no
    /// master serves are returned apart.
    pub(super) fn group<'k>(
        &self,
        keys: impl Iterator<Item = &'k str>,
    ) -> (Vec<NodeBatch<'_>>, Vec<usize>) {
        let mut batches: Vec<NodeBatch<'_>> = Vec::new();
        let mut unrouted = Vec::new();
        for (index, key) in keys.enumerate() {
            let slot = slot(key.as_bytes());
            let Some(node) = self.nodes.get(usize::from(self.slots[usize::from(slot)])) else {
                unrouted.push(index);
                continue;
            };
            let batch = match batches.iter_mut().position(|b| std::ptr::eq(b.node, node)) {
                Some(i) => &mut batches[i],
                None => {
                    batches.push(NodeBatch {
                        node,
                        slots: Vec::new(),
                    });
                    batches.last_mut().expect("just pushed")
                }
            };
            match batch.slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, indices)) => indices.push(index),
                None => batch.slots.push((slot, vec![index])),
            }
        }
        (batches, unrouted)
    }
}

/// Sends one pipeline per node concurrently, each holding what `build` adds for that
/// node's batch, with `ignore_errors` so each command's reply (or error) comes back on
/// its own; the replies of each node, in the order of `batches`.
pub(super) async fn fan_out(
    batches: &[NodeBatch<'_>],
    build: impl Fn(&NodeBatch<'_>, &mut redis::Pipeline),
) -> Vec<Result<Vec<Value>, Unavailable>> {
    join_all(batches.iter().map(|batch| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        build(batch, &mut pipe);
        let link = &batch.node.link;
        async move { link.pipeline::<Vec<Value>>(&pipe).await }
    }))
    .await
}
