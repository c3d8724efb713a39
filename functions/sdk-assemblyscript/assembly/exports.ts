// The ABI exports of an ebbtide function: a function's main.ts re-exports them with
//     export * from "ebbtide/exports";
// (only the entry file's exports become the module's exports). The compiler exports `memory` itself.
export {
  ebbtide_abi_version,
  ebbtide_input_ptr,
  ebbtide_input_capacity,
  ebbtide_output_ptr,
  ebbtide_output_capacity,
  ebbtide_init,
  ebbtide_handle,
  ebbtide_handle_batch,
} from "./index";
