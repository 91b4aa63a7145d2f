//! Shared, I/O-free types for Baton: frames, stacks, profiles, flame trees and export formats.
//!
//! Everything that crosses a crate boundary or the wire is defined here. Nothing in this crate
//! touches the file system, the network or the kernel; writers take a `std::io::Write`.

pub mod batch;
pub mod duration;
pub mod export;
pub mod flame;
pub mod frame;
pub mod hist;
pub mod limits;
pub mod named;
pub mod profile;
pub mod prom;
pub mod registry;
pub mod schema;
pub mod sync;
pub mod time;
pub mod wire;

pub use batch::{Batch, Span, SpanKind};
pub use duration::{parse_duration, DurationError};
pub use flame::{FlameNode, TopEntry};
pub use frame::{Frame, FrameKind};
pub use hist::{Bucket, Histogram};
pub use named::{FlatTree, NamedStacks};
pub use profile::{Labels, Profile, StackSample, ValueType};
pub use registry::{Claim, CostClass, CostlyMode, OptionInfo, ProfilerInfo, ValueInfo};
pub use schema::{SchemaAction, SchemaRule, StackSchema};
