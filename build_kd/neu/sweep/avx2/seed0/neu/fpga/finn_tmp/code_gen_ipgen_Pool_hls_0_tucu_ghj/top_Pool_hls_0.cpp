
#define HLS_CONSTEXPR_ENABLE
#define AP_INT_MAX_W 48

#include "bnn-library.h"

#include "pool.hpp"

constexpr unsigned  ISIZE = 4096;
constexpr unsigned  K = 256;

void Pool_hls_0(hls::stream<hls::vector<ap_uint<4>, 6>> &in0_V, hls::stream<hls::vector<ap_uint<8>, 6>> &out0_V)
{
#pragma HLS INTERFACE axis port=in0_V
#pragma HLS INTERFACE axis port=out0_V
#pragma HLS INTERFACE ap_ctrl_none port=return
#pragma HLS dataflow disable_start_propagation
#pragma HLS aggregate variable=in0_V compact=bit
#pragma HLS aggregate variable=out0_V compact=bit
QuantAvgPoolFunction<hls::vector<ap_uint<8>, 6>,hls::vector<ap_uint<12>, 6>,4> pool_fxn;
Pool_batch<ISIZE, K>(in0_V, out0_V, pool_fxn);
}
