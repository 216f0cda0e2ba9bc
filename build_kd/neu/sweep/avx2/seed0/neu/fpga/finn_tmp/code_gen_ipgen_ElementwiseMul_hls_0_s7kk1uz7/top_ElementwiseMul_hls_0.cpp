
#define HLS_CONSTEXPR_ENABLE
#define AP_INT_MAX_W 32

#include "bnn-library.h"

#include "flatten.hpp"

using LhsType = ap_int<21>;
using RhsType = float;
using OutType = float;
static constexpr auto LhsWidth = 21;
static constexpr auto RhsWidth = 32;
static constexpr auto OutWidth = 32;
using LhsPacked = ap_uint<21>;
using RhsPacked = ap_uint<0>;
using OutPacked = ap_uint<32>;
#include "params.hpp"
using LhsStream = hls::stream<LhsPacked>;
using RhsStream = hls::stream<RhsPacked>;
using OutStream = hls::stream<OutPacked>;

void ElementwiseMul_hls_0 (
  LhsStream &in0_V,

  OutStream &out0_V
)
{
#pragma HLS BIND_STORAGE variable=rhs type=ROM_2P impl=LUTRAM
#pragma HLS ARRAY_PARTITION variable=rhs complete dim=3
#pragma HLS INTERFACE axis port=out0_V
#pragma HLS INTERFACE axis port=in0_V
#pragma HLS INTERFACE ap_ctrl_none port=return

LhsType lhs[1][1][1];
#pragma HLS ARRAY_PARTITION variable=lhs complete dim=3
#pragma HLS BIND_STORAGE variable=lhs type=RAM_S2P impl=LUTRAM



OutType out[1];
#pragma HLS ARRAY_PARTITION variable=out complete dim=1
#pragma HLS BIND_STORAGE variable=out type=RAM_S2P impl=LUTRAM

for(std::size_t i0 = 0; i0<1; ++i0) {
for(std::size_t i1 = 0; i1<6; ++i1) {

#pragma HLS pipeline II=1 style=flp


if(true) {
    const auto buffer = Slice<LhsType>{}(
        in0_V.read()
    );
    for(std::size_t pe = 0; pe < 1; ++pe) {
    #pragma HLS unroll
        lhs[0][0][pe] = buffer(pe, 0);
    }
}



for(std::size_t pe = 0; pe < 1; ++pe) {
#pragma HLS unroll
#pragma HLS INLINE recursive
    out[pe] = (lhs[0][0][pe] * rhs[0][i1][pe]);
}


out0_V.write(flatten(out));

}
}
}
