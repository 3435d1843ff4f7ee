//! Typed scalar function pointers: their address (for the analyser), their
//! argument shape (derived from the Rust type, so it cannot disagree with the
//! function) and a caller that takes arguments as values.

use std::fmt;
use std::sync::Arc;

/// The type of one argument of a scalar reference function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbiType {
    F32,
    Usize,
    ConstPtr,
    MutPtr,
}

/// What a scalar reference function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbiReturn {
    F32,
    Unit,
}

/// One argument value for [`ScalarFn::call`].
#[derive(Debug, Clone, Copy)]
pub enum AbiValue {
    F32(f32),
    Usize(usize),
    ConstPtr(*const f32),
    MutPtr(*mut f32),
}

impl AbiValue {
    pub fn abi_type(&self) -> AbiType {
        match self {
            AbiValue::F32(_) => AbiType::F32,
            AbiValue::Usize(_) => AbiType::Usize,
            AbiValue::ConstPtr(_) => AbiType::ConstPtr,
            AbiValue::MutPtr(_) => AbiType::MutPtr,
        }
    }
}

/// A Rust type that can be an argument of a scalar reference function.
pub trait AbiArg: Copy {
    const TYPE: AbiType;
    fn from_value(v: &AbiValue) -> Option<Self>;
}

/// `impl AbiArg` for a Rust type carried by the `AbiValue` (and `AbiType`)
/// variant of the same name.
macro_rules! abi_arg {
    ($($rust:ty => $variant:ident),* $(,)?) => {$(
        impl AbiArg for $rust {
            const TYPE: AbiType = AbiType::$variant;
            fn from_value(v: &AbiValue) -> Option<Self> {
                match *v {
                    AbiValue::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    )*};
}

abi_arg!(f32 => F32, usize => Usize, *const f32 => ConstPtr, *mut f32 => MutPtr);

/// A Rust type that can be the return type of a scalar reference function.
pub trait AbiRet {
    const RETURN: AbiReturn;
    fn into_f32(self) -> Option<f32>;
}
impl AbiRet for f32 {
    const RETURN: AbiReturn = AbiReturn::F32;
    fn into_f32(self) -> Option<f32> {
        Some(self)
    }
}
impl AbiRet for () {
    const RETURN: AbiReturn = AbiReturn::Unit;
    fn into_f32(self) -> Option<f32> {
        None
    }
}

/// Function pointer types usable as scalar reference functions: `extern "C"`
/// (safe or `unsafe`) with up to 8 arguments of [`AbiArg`] types.
pub trait ScalarFnPtr: Copy + Send + Sync + 'static {
    fn address(self) -> usize;
    fn params() -> Vec<AbiType>;
    fn returns() -> AbiReturn;
    /// Calls the function; `None` when the argument values do not match.
    ///
    /// # Safety
    /// Pointer arguments must satisfy the function's own safety contract.
    unsafe fn call_with(self, args: &[AbiValue]) -> Option<Option<f32>>;
}

macro_rules! impl_scalar_fn_ptr {
    ($($a:ident),*) => {
        // A safe function is an unsafe one with an empty contract.
        impl<R: AbiRet + 'static, $($a: AbiArg + 'static),*> ScalarFnPtr for extern "C" fn($($a),*) -> R {
            fn address(self) -> usize { self as usize }
            fn params() -> Vec<AbiType> { <unsafe extern "C" fn($($a),*) -> R as ScalarFnPtr>::params() }
            fn returns() -> AbiReturn { R::RETURN }
            unsafe fn call_with(self, args: &[AbiValue]) -> Option<Option<f32>> {
                let f: unsafe extern "C" fn($($a),*) -> R = self;
                // SAFETY: forwarded; a safe function has no contract of its own.
                unsafe { f.call_with(args) }
            }
        }
        impl<R: AbiRet + 'static, $($a: AbiArg + 'static),*> ScalarFnPtr for unsafe extern "C" fn($($a),*) -> R {
            fn address(self) -> usize { self as usize }
            fn params() -> Vec<AbiType> { vec![$($a::TYPE),*] }
            fn returns() -> AbiReturn { R::RETURN }
            #[allow(non_snake_case, unused_variables, unused_mut, unused_assignments)]
            unsafe fn call_with(self, args: &[AbiValue]) -> Option<Option<f32>> {
                let mut it = args.iter();
                $(let $a = $a::from_value(it.next()?)?;)*
                if it.next().is_some() { return None; }
                // SAFETY: the caller upholds the function's contract.
                Some(unsafe { self($($a),*) }.into_f32())
            }
        }
    };
}
impl_scalar_fn_ptr!(A);
impl_scalar_fn_ptr!(A, B);
impl_scalar_fn_ptr!(A, B, C);
impl_scalar_fn_ptr!(A, B, C, D);
impl_scalar_fn_ptr!(A, B, C, D, E);
impl_scalar_fn_ptr!(A, B, C, D, E, F);
impl_scalar_fn_ptr!(A, B, C, D, E, F, G);
impl_scalar_fn_ptr!(A, B, C, D, E, F, G, H);

type Caller = dyn Fn(&[AbiValue]) -> Option<Option<f32>> + Send + Sync;

/// A scalar reference function with its shape, type-erased.
#[derive(Clone)]
pub struct ScalarFn {
    address: usize,
    params: Vec<AbiType>,
    returns: AbiReturn,
    caller: Arc<Caller>,
}

impl ScalarFn {
    /// Wraps a typed `extern "C"` function pointer.
    pub fn new<F: ScalarFnPtr>(f: F) -> ScalarFn {
        ScalarFn {
            address: f.address(),
            params: F::params(),
            returns: F::returns(),
            // SAFETY (of the eventual call): deferred to `ScalarFn::call`'s contract.
            caller: Arc::new(move |args| unsafe { f.call_with(args) }),
        }
    }

    /// Entry address of the machine code.
    pub fn address(&self) -> usize {
        self.address
    }

    /// Argument types in order.
    pub fn params(&self) -> &[AbiType] {
        &self.params
    }

    pub fn returns(&self) -> AbiReturn {
        self.returns
    }

    /// Calls the function with `args`; `None` when they do not match its
    /// parameter types. Returns the f32 result, if it has one.
    ///
    /// # Safety
    /// Pointer arguments must be valid for what the function reads and writes
    /// (its registered signature's lengths).
    pub unsafe fn call(&self, args: &[AbiValue]) -> Option<Option<f32>> {
        (self.caller)(args)
    }
}

impl fmt::Debug for ScalarFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScalarFn({:#x}, {:?} -> {:?})", self.address, self.params, self.returns)
    }
}
