
set config_proj_name project_DuplicateStreams_hls_0
puts "HLS project: $config_proj_name"
set config_hwsrcdir "/work/main/build/neu/sweep/avx2/seed0/neu/fpga/finn_tmp/code_gen_ipgen_DuplicateStreams_hls_0_71dp9zht"
puts "HW source dir: $config_hwsrcdir"
set config_proj_part "xczu7ev-ffvc1156-2-e"
set config_bnnlibdir "/work/main/.venv/lib/python3.11/site-packages/finn/finn_deps/finn-hlslib"
puts "finn-hlslib dir: $config_bnnlibdir"
set config_attentionlibdir "/work/main/.venv/lib/python3.11/site-packages/finn/finn_deps/attention-hlslib"
puts "attention-hlslib dir: $config_attentionlibdir"
set config_customhlsdir "$::env(FINN_CUSTOM_HLS)"
puts "custom HLS dir: $config_customhlsdir"
set config_toplevelfxn "DuplicateStreams_hls_0"
set config_clkperiod 5.0

open_project $config_proj_name
add_files $config_hwsrcdir/top_DuplicateStreams_hls_0.cpp -cflags "-std=c++14 -I$config_bnnlibdir -I$config_customhlsdir -I$config_attentionlibdir"

set_top $config_toplevelfxn
open_solution sol1
set_part $config_proj_part

set_param hls.enable_hidden_option_error false
config_compile -disable_unroll_code_size_check -pipeline_style flp
config_interface -m_axi_addr64
config_rtl -module_auto_prefix
config_rtl -deadlock_detection none


create_clock -period $config_clkperiod -name default
csynth_design
export_design -format ip_catalog
exit 0
