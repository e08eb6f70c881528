//! Benchmark guest for `host/benches/boundary.rs`: receives batches in four
//! layouts and touches every record, so the benchmark measures the cost of
//! the crossing itself. Not a weir plugin (it exports another world).

wit_bindgen::generate!({
    path: "wit",
    world: "layout-probe",
});

use exports::weir_bench::layout::probe::{FlatBatch, Guest, NestedEvent, WordBatch};

struct Probe;

impl Guest for Probe {
    fn per_record(event: NestedEvent) -> u32 {
        event.payload.len() as u32
    }

    fn nested(events: Vec<NestedEvent>) -> u32 {
        events.iter().map(|e| e.payload.len() as u32).sum()
    }

    fn flat(batch: FlatBatch) -> u32 {
        batch.events.iter().map(|e| e.payload.len).sum()
    }

    fn words(batch: WordBatch) -> u32 {
        batch.events.chunks_exact(10).map(|e| e[3]).sum()
    }
}

export!(Probe);
