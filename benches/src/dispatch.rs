//! Scenario 3: routing an envelope to its handler. The generated dispatch
//! table against the two ways apps write it by hand: a `match` on the type
//! name, and a `HashMap<String, Box<dyn Fn>>` registry. Sixteen message
//! types, envelopes of all of them in turn; lookup alone, then lookup, decode
//! and the (no-op) handler.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use outbox_runtime::{Dispatcher, Envelope};
use serde_json::value::RawValue;

use crate::Sizes;
use crate::messages::*;
use crate::report::{Section, count, median, ratio};

type BoxFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Registry = HashMap<String, Box<dyn Fn(&RawValue) -> BoxFuture>>;

/// Runs a future that never waits (every handler here), without a runtime.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the bench handlers never wait"),
    }
}

macro_rules! by_hand {
    ($($ty:ident $name:literal $handler:ident),*) => {
        /// A hand-written `match`: the index of the message type.
        fn match_lookup(envelope: &Envelope) -> Option<usize> {
            if envelope.version != 1 {
                return None;
            }
            let mut i = 0;
            $(
                if envelope.message_type == $name {
                    return Some(i);
                }
                i += 1;
            )*
            let _ = i;
            None
        }

        /// A hand-written `match`: decode, then call the handler.
        async fn match_dispatch(envelope: &Envelope) -> anyhow::Result<()> {
            anyhow::ensure!(envelope.version == 1, "unsupported version");
            match envelope.message_type.as_str() {
                $($name => $handler(serde_json::from_str::<$ty>(envelope.payload.get())?).await,)*
                other => anyhow::bail!("unknown type {other}"),
            }
        }

        /// A registry of boxed closures, as apps build at start-up.
        fn registry() -> Registry {
            let mut map: Registry = HashMap::new();
            $(
                map.insert(
                    $name.to_owned(),
                    Box::new(|payload: &RawValue| -> BoxFuture {
                        match serde_json::from_str::<$ty>(payload.get()) {
                            Ok(msg) => Box::pin($handler(msg)),
                            Err(err) => Box::pin(async move { Err(err.into()) }),
                        }
                    }),
                );
            )*
            map
        }
    };
}

by_hand!(
    M0 "bench.m00" h0, M1 "bench.m01" h1, M2 "bench.m02" h2, M3 "bench.m03" h3,
    M4 "bench.m04" h4, M5 "bench.m05" h5, M6 "bench.m06" h6, M7 "bench.m07" h7,
    M8 "bench.m08" h8, M9 "bench.m09" h9, M10 "bench.m10" h10, M11 "bench.m11" h11,
    M12 "bench.m12" h12, M13 "bench.m13" h13, M14 "bench.m14" h14, M15 "bench.m15" h15
);

fn envelopes() -> anyhow::Result<Vec<Envelope>> {
    NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut envelope = Envelope::from_message(&m0(i))?;
            envelope.message_type = (*name).to_owned();
            Ok(envelope)
        })
        .collect()
}

/// Rounds each variant is timed in.
const ROUNDS: usize = 10;

/// Nanoseconds per call of each of `variants`, each called `n` times in all,
/// cycling through `envelopes`: the variants take turns, [`ROUNDS`] rounds
/// of `n / ROUNDS` calls, so drift on the machine falls on all of them
/// alike; the median round is the result.
fn time(n: usize, envelopes: &[Envelope], variants: &mut [&mut dyn FnMut(&Envelope)]) -> Vec<f64> {
    let per_round = (n / ROUNDS).max(1);
    let mut samples = vec![Vec::with_capacity(ROUNDS); variants.len()];
    for _ in 0..ROUNDS {
        for (variant, samples) in variants.iter_mut().zip(&mut samples) {
            let started = Instant::now();
            for i in 0..per_round {
                variant(black_box(&envelopes[i % envelopes.len()]));
            }
            samples.push(started.elapsed().as_nanos() as f64 / per_round as f64);
        }
    }
    samples.into_iter().map(median).collect()
}

pub(crate) fn run(sizes: Sizes) -> anyhow::Result<Section> {
    let dispatcher = Dispatcher::from_registry()?;
    // The 16 bench messages, the latency scenario's probe and the handling
    // scenario's message.
    anyhow::ensure!(
        dispatcher.table().len() == 18,
        "the table has {} messages, not 18",
        dispatcher.table().len()
    );
    let registry = registry();
    let envelopes = envelopes()?;
    let n = sizes.dispatches;

    // Every variant must find and handle every envelope, or the timings
    // compare different work.
    for envelope in &envelopes {
        dispatcher.route(envelope)?;
        anyhow::ensure!(match_lookup(envelope).is_some());
        anyhow::ensure!(registry.contains_key(&envelope.message_type));
        anyhow::ensure!(now(dispatcher.dispatch(envelope))?.succeeded());
        now(match_dispatch(envelope))?;
        now(registry[&envelope.message_type](&envelope.payload))?;
    }

    let lookups = time(
        n,
        &envelopes,
        &mut [
            &mut |e| {
                black_box(dispatcher.route(e).ok());
            },
            &mut |e| {
                black_box(match_lookup(e));
            },
            &mut |e| {
                black_box(registry.get(e.message_type.as_str()));
            },
        ],
    );
    let fulls = time(
        n,
        &envelopes,
        &mut [
            &mut |e| {
                black_box(now(dispatcher.dispatch(e)).map(|r| r.succeeded()).ok());
            },
            &mut |e| {
                black_box(now(match_dispatch(e)).is_ok());
            },
            &mut |e| {
                let handler = &registry[e.message_type.as_str()];
                black_box(now(handler(&e.payload)).is_ok());
            },
        ],
    );
    let ([lookup_table, lookup_match, lookup_map], [full_table, full_match, full_map]) = (
        <[f64; 3]>::try_from(lookups).map_err(|_| anyhow::anyhow!("three lookups"))?,
        <[f64; 3]>::try_from(fulls).map_err(|_| anyhow::anyhow!("three variants"))?,
    );

    let mut section = Section::new(
        "3. Dispatch: the generated table against hand-written routing",
        &format!(
            "16 message types (the table also holds the latency and handling scenarios' two), {} \
             envelopes cycling \
             through the 16, per variant; the variants take turns in 10 rounds and the \
             median round is shown; one thread, no I/O. *Lookup*: find the handler for (type, version). \
             *Decode + handle*: also decode the payload into the Rust type and run the no-op \
             handler (the table through `Dispatcher::dispatch`, which also builds its report). \
             Baseline: a hand-written `match` on the type name.",
            count(n as f64)
        ),
        &[
            "variant",
            "lookup (ns)",
            "× match",
            "decode + handle (ns)",
            "× match",
        ],
    );
    for (name, lookup, full) in [
        ("generated table (`Dispatcher`)", lookup_table, full_table),
        ("hand-written `match` (baseline)", lookup_match, full_match),
        ("`HashMap<String, Box<dyn Fn>>`", lookup_map, full_map),
    ] {
        section.row(vec![
            name.to_owned(),
            format!("{lookup:.1}"),
            ratio(lookup / lookup_match),
            format!("{full:.1}"),
            ratio(full / full_match),
        ]);
    }
    let goal = full_table / full_match;
    section.verdict = format!(
        "Goal: within 1.1× of the hand-written match with decoding included. {}",
        if goal <= 1.1 {
            format!("Met: {}.", ratio(goal))
        } else {
            format!("Missed: {} (see Analysis).", ratio(goal))
        }
    );
    Ok(section)
}
