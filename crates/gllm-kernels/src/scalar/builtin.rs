//! The built-in operators' registrations: function + meaning of its arguments.

use super::ops::*;
use super::registry::{OpKind, ScalarOpRegistry};
use super::signature::{Arg, Len, OpSignature, Returns, TensorRole};

type Unary = extern "C" fn(f32) -> f32;
type Binary = extern "C" fn(f32, f32) -> f32;

fn elem(name: &'static str) -> Arg {
    Arg::Element { name, role: TensorRole::Activation }
}

fn input(name: &'static str, role: TensorRole, len: Len) -> Arg {
    Arg::Input { name, role, len }
}

fn sig(args: Vec<Arg>, returns: Returns) -> OpSignature {
    OpSignature::new(args, returns).expect("built-in signatures are well-formed")
}

pub(super) fn register_all(r: &mut ScalarOpRegistry) {
    let unary = sig(vec![elem("x")], Returns::Element);
    let mut add = |kind: OpKind, f: Unary| r.register(kind, f, unary.clone()).expect("built-in");
    add(OpKind::Silu, gk_silu);
    add(OpKind::Gelu, gk_gelu);
    add(OpKind::Relu, gk_relu);
    add(OpKind::Sigmoid, gk_sigmoid);
    add(OpKind::Tanh, gk_tanh);
    add(OpKind::Exp, gk_exp);

    let binary = |second: Arg| sig(vec![elem("x"), second], Returns::Element);
    let with = |name, role| Arg::Element { name, role };
    let binaries: [(OpKind, Binary, OpSignature); 5] = [
        (OpKind::Mul, gk_mul, binary(with("weight", TensorRole::Weight))),
        (OpKind::Add, gk_add, binary(with("residual", TensorRole::Residual))),
        (OpKind::BiasAdd, gk_bias_add, binary(with("bias", TensorRole::Bias))),
        (OpKind::Scale, gk_scale, binary(Arg::Scalar { name: "scale" })),
        (OpKind::SwiGlu, gk_swiglu, sig(vec![elem("gate"), elem("up")], Returns::Element)),
    ];
    for (kind, f, s) in binaries {
        r.register(kind, f, s).expect("built-in");
    }

    use TensorRole::*;
    let n = Len::Dim(0);
    let dim = |name| Arg::Dim { name };
    let out = |name, len| Arg::Output { name, len };
    let reductions: [(OpKind, unsafe extern "C" fn(*const f32, usize) -> f32); 2] =
        [(OpKind::ReduceSum, gk_reduce_sum), (OpKind::ReduceMax, gk_reduce_max)];
    for (kind, f) in reductions {
        r.register(kind, f, sig(vec![input("x", Activation, n), dim("n")], Returns::RowScalar))
            .expect("built-in");
    }
    r.register(
        OpKind::Dot,
        gk_dot as unsafe extern "C" fn(*const f32, *const f32, usize) -> f32,
        sig(vec![input("a", Activation, n), input("b", Weight, n), dim("n")], Returns::RowScalar),
    )
    .expect("built-in");
    r.register(
        OpKind::RmsNorm,
        gk_rms_norm as unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, f32),
        sig(
            vec![
                input("x", Activation, n),
                input("weight", Weight, n),
                out("out", n),
                dim("n"),
                Arg::Scalar { name: "eps" },
            ],
            Returns::Nothing,
        ),
    )
    .expect("built-in");
    r.register(
        OpKind::LayerNorm,
        gk_layer_norm as unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, usize, f32),
        sig(
            vec![
                input("x", Activation, n),
                input("gamma", Weight, n),
                input("beta", Bias, n),
                out("out", n),
                dim("n"),
                Arg::Scalar { name: "eps" },
            ],
            Returns::Nothing,
        ),
    )
    .expect("built-in");
    r.register(
        OpKind::Softmax,
        gk_softmax as unsafe extern "C" fn(*const f32, *mut f32, usize),
        sig(vec![input("x", Activation, n), out("out", n), dim("n")], Returns::Nothing),
    )
    .expect("built-in");
    r.register(
        OpKind::Top2Softmax,
        gk_top2_softmax as unsafe extern "C" fn(*const f32, *mut f32, usize),
        sig(vec![input("x", Activation, n), out("out", n), dim("n")], Returns::Nothing),
    )
    .expect("built-in");
    r.register(
        OpKind::Rope,
        gk_rope
            as unsafe extern "C" fn(
                *const f32,
                *const f32,
                *const f32,
                *const f32,
                *mut f32,
                *mut f32,
                usize,
            ),
        sig(
            vec![
                input("x0", Activation, n),
                input("x1", Activation, n),
                input("cos", Table, n),
                input("sin", Table, n),
                out("out0", n),
                out("out1", n),
                dim("n"),
            ],
            Returns::Nothing,
        ),
    )
    .expect("built-in");
    r.register(
        OpKind::MatMul,
        gk_matmul as unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, usize),
        sig(
            vec![
                input("a", Activation, Len::Product(0, 2)),
                input("b", Weight, Len::Product(2, 1)),
                out("c", Len::Product(0, 1)),
                dim("m"),
                dim("n"),
                dim("k"),
            ],
            Returns::Nothing,
        ),
    )
    .expect("built-in");
}
