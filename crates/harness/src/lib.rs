//! The agent harness: the loop that turns a run's journal into its next action.
//!
//! It is a pure state machine. [`RunState`] is a fold over journal events; [`next_step`] looks at
//! the state and the compiled [`Agent`] and says what must happen next: call the model, run a
//! tool, record decisions, park on an approval, or nothing (the run ended). The engine performs
//! the effects and journals their results; the harness never touches the database or sockets.
//! Agent packages ([`agent`]) and the tool-executor seam ([`tools`]) live here too.

pub mod agent;
pub mod state;
pub mod step;
pub mod tools;

pub use agent::{Agent, AgentError, LoadError, Rendered, load_all, load_dir};
pub use state::RunState;
pub use step::{Step, next_step};
pub use tools::{ToolContext, ToolExecutor, ToolOutput, WorkspaceTools};
