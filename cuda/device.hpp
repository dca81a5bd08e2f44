#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace stemedge::cuda {

struct DeviceInfo {
    int index;
    std::string name;
    int compute_capability;  // e.g. 90
    std::size_t total_memory;
    int multiprocessors;
};

struct DeviceReport {
    std::vector<DeviceInfo> devices;
    std::string error;  // empty when the query succeeded
    int driver_version = 0, runtime_version = 0;
};

DeviceReport query_devices();

}  // namespace stemedge::cuda
