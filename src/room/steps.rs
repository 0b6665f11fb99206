//! Running a plan's steps in order, stopping at the first failure with a sentence that names
//! the step and what was done before it.

use crate::base::logtext::chain;

/// Runs steps in order, stopping at the first failure with a sentence that names the step
/// and what was done before it. Shared by the kernel and userspace backends.
pub fn run_steps<A: std::fmt::Display, E: std::error::Error + 'static>(
    actions: &[A],
    mut step: impl FnMut(&A) -> Result<(), E>,
    progress: &mut dyn FnMut(usize, &A),
) -> Result<(), StepFailed<E>> {
    for (i, action) in actions.iter().enumerate() {
        progress(i, action);
        if let Err(e) = step(action) {
            return Err(StepFailed {
                number: i + 1,
                total: actions.len(),
                step: action.to_string(),
                error: Box::new(e),
            });
        }
    }
    Ok(())
}

/// A plan's step failed: which, of how many, with its error's chain and what was done
/// before it. Shared by the kernel's steps and the service's.
#[derive(Debug, thiserror::Error)]
#[error("step {number} of {total} failed: {step}: {} ({}; `cowctl plan` shows what is left)", chain(error.as_ref()), done(*number))]
pub struct StepFailed<E: std::error::Error + 'static> {
    /// From 1.
    pub number: usize,
    pub total: usize,
    /// The step as plan prints it.
    pub step: String,
    pub error: Box<E>,
}

fn done(number: usize) -> String {
    match number - 1 {
        0 => "nothing was changed before it".to_string(),
        before => format!("the {before} step(s) before it are done and stay"),
    }
}
